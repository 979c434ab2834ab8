//! The shard ports of a cluster instance (`serve --cluster`): shard `i`
//! also listens on `PORT+1+i`, so that a front (the generated nginx) can
//! reach the owning core directly and nothing is forwarded between cores.

use std::net::{SocketAddr, TcpListener};

use crate::cluster::ClusterSeat;

use super::listen::bind;

/// One listener per shard on its own port (`None` for every shard when
/// not in a cluster). `shared`: the bound shared address.
pub(super) fn bind_shard_ports(
    cluster: Option<&ClusterSeat>,
    shared: SocketAddr,
) -> Result<Vec<Option<TcpListener>>, String> {
    let Some(seat) = cluster else {
        return Ok(Vec::new());
    };
    let me = &seat.cluster.instances[seat.instance];
    let mut ports = Vec::with_capacity(me.shards);
    for i in 0..me.shards {
        let mut addr = shared;
        addr.set_port(me.port + 1 + i as u16);
        let mut bound =
            bind(addr, 1, &seat.change_port()).map_err(|e| format!("shard {i}'s own port: {e}"))?;
        ports.push(bound.sockets.pop());
    }
    crate::log_line!(
        "instance {} of {}: shard ports {}..={}",
        me.name,
        seat.cluster.instances.len(),
        me.port + 1,
        me.port as usize + me.shards
    );
    Ok(ports)
}
