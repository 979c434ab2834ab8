cd /tmp/gc/fsb
taskset -c 0 python3 one.py f 2 "no spinner, test cpu0"
taskset -c 1 python3 one.py f 2 "no spinner, test cpu1"
taskset -c 1 python3 -c "while True: pass" & S=$!
taskset -c 0 python3 one.py f 2 "spinner cpu1, test cpu0"
kill $S
taskset -c 0 python3 -c "while True: pass" & S=$!
taskset -c 1 python3 one.py f 2 "spinner cpu0, test cpu1"
kill $S
