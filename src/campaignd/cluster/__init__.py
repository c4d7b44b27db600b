"""Several daemons on one PostgreSQL database acting as one (SPEC §9).

`membership` keeps this daemon's heartbeat lease and the leader's lease and fences the daemon
when its lease is about to lapse; `bus` carries LISTEN/NOTIFY messages between the members;
`barrier` makes Pause and Stop a barrier for every member; `shares` divides the transports'
rates and concurrency among the members; `node` puts them together for the daemon. On SQLite
one daemon is the whole cluster (`node.SingleNode`).
"""
