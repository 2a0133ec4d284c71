//! raftmq's wire protocols, generated from the `.proto` files beside this crate.
//!
//! * [`rocketmq::v2`]: the Apache RocketMQ 5 client API (`apache.rocketmq.v2`), wire-compatible
//!   with the official clients.
//! * [`raft::v1`]: Raft RPC between the nodes of one broker group, and the records raftmq
//!   stores on disk (log entries, commands, consume-queue entries).
//! * [`admin::v1`]: the operator API (cluster status, topics).

pub mod rocketmq {
    pub mod v2 {
        tonic::include_proto!("apache.rocketmq.v2");
    }
}

pub mod raft {
    pub mod v1 {
        tonic::include_proto!("raftmq.raft.v1");
    }
}

pub mod admin {
    pub mod v1 {
        tonic::include_proto!("raftmq.admin.v1");
    }
}
