//! Named `u64` counters, each declared once: `counters!` makes the struct,
//! its field-by-field `add` and a table of its fields, which renderers walk
//! (`metrics.rs`). Knows nothing of JSON or Prometheus.

/// What a counter counts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// A running total: only goes up.
    Counter,
    /// A level, read when the snapshot is taken: goes up and down.
    Gauge,
    /// A running total of answered requests of one route (`"feed"`,
    /// `"other"`) and status class (`"2xx"`...). A run of `Status` fields
    /// splits one quantity by route and class.
    Status(&'static str, &'static str),
}

/// One field of a `counters!` struct.
#[derive(Debug)]
pub struct Field<T> {
    pub name: &'static str,
    /// The first line of the field's doc comment.
    pub help: &'static str,
    pub kind: Kind,
    pub get: fn(&T) -> u64,
}

/// Declares a struct of `pub` `u64` counters, each as its doc comment (the
/// first line is its help text) and `name: Kind`, and gives the struct
/// `add` (field by field, for merging shards) and `FIELDS`, a [`Field`] per
/// counter in declaration order.
///
/// ```ignore
/// counters! {
///     #[derive(Debug, Clone, Copy, Default)]
///     pub struct Totals {
///         /// Pages served.
///         pages: Counter,
///     }
/// }
/// ```
macro_rules! counters {
    (
        $(#[$meta:meta])*
        pub struct $name:ident {
            $(
                #[doc = $help:literal]
                $(#[doc = $doc:literal])*
                $field:ident: $kind:ident $(($($arg:literal),+))?,
            )+
        }
    ) => {
        $(#[$meta])*
        pub struct $name {
            $(
                #[doc = $help]
                $(#[doc = $doc])*
                pub $field: u64,
            )+
        }

        impl $name {
            /// Every counter, in declaration order.
            pub const FIELDS: &'static [$crate::counters::Field<$name>] = &[$(
                $crate::counters::Field {
                    name: stringify!($field),
                    help: $help.trim_ascii(),
                    kind: $crate::counters::Kind::$kind $(($($arg),+))?,
                    get: |c: &$name| c.$field,
                },
            )+];

            /// Adds another's counts, field by field (merging shards).
            pub fn add(&mut self, o: &$name) {
                $(self.$field += o.$field;)+
            }
        }
    };
}

pub(crate) use counters;

#[cfg(test)]
mod tests {
    use super::*;

    counters! {
        /// Two counters.
        #[derive(Debug, Default, PartialEq, Eq)]
        pub struct Two {
            /// Things counted.
            ///
            /// More about them, not in the help text.
            things: Counter,
            /// Level now.
            level: Gauge,
        }
    }

    #[test]
    fn fields_read_their_counter_and_add_sums_each() {
        let mut a = Two {
            things: 1,
            level: 2,
        };
        a.add(&Two {
            things: 10,
            level: 20,
        });
        assert_eq!(
            a,
            Two {
                things: 11,
                level: 22
            }
        );
        let table: Vec<_> = Two::FIELDS
            .iter()
            .map(|f| (f.name, f.help, f.kind, (f.get)(&a)))
            .collect();
        assert_eq!(
            table,
            [
                ("things", "Things counted.", Kind::Counter, 11),
                ("level", "Level now.", Kind::Gauge, 22),
            ]
        );
    }
}
