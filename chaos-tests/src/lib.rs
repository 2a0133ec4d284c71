//! Test harness for raftmq: clusters of real `raftmq broker` processes, faults applied to
//! them, and checkers that compare what clients were told with what every replica holds.

pub mod cluster;
pub mod disk;
pub mod history;
pub mod nemesis;
pub mod netns;
pub mod report;
pub mod run;
