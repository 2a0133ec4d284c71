#!/usr/bin/env python3
"""Sum a `perf script` dump of call-graph samples (stdin) into the stages of a raftmq process.

Prints, as shares of all samples: the stages below (inclusive: a sample counts for every stage
whose frame is on its stack, so stages may overlap, e.g. the SendMessage handler lies inside
the per-call tasks), the threads, and the frames with the most self time. Used by
scripts/profile.sh; the stage names are the ones docs/BENCHMARKS.md uses.
"""
import collections
import re
import sys

# (stage, regular expression over a frame's symbol)
STAGES = [
    ("HTTP/2 connections (frames in and out, both ports)",
     r"h2::proto::connection::Connection<.*>::poll$"),
    ("per-call tasks (hyper, tonic, the handlers)", r"hyper::proto::h2::server::H2Stream<"),
    ("  gRPC decode of requests", r"tonic::codec::decode::Streaming<"),
    ("  the SendMessage handler", r"MessagingService>::send_message"),
    ("send batcher", r"raftmq::broker::batcher::"),
    ("openraft's core", r"openraft::core::raft_core::RaftCore<"),
    ("  log append", r"raftmq_storage::log::LogStore::append"),
    ("openraft's replication streams", r"openraft::replication::"),
    ("apply", r"raftmq_storage::state::BrokerState::apply$"),
    ("  RocksDB point reads (dedup lookups)", r"rocksdb::DBImpl::Get$"),
    ("RocksDB writes (WAL and memtables)", r"rocksdb::DBImpl::WriteImpl$"),
    ("kernel: TCP send", r"^(tcp_sendmsg|__sys_sendto|do_writev)$"),
    ("kernel: TCP receive", r"^(tcp_recvmsg|__sys_recvfrom)$"),
    ("kernel: fsync", r"^(__x64_sys_fdatasync|__x64_sys_fsync)$"),
    ("allocator (mimalloc)", r"^_?mi_"),
    ("memcpy / memmove", r"mem(cpy|move)"),
]


def samples(lines):
    """Yield (thread name, [frame symbols, innermost first]) for each sample."""
    thread, frames = None, []
    for line in lines:
        line = line.rstrip("\n")
        if not line.strip():
            if thread is not None:
                yield thread, frames
            thread, frames = None, []
        elif not line[0].isspace():
            # "comm pid/tid time: period event:" - the thread name may contain spaces.
            thread = re.split(r"\s+\d+(/\d+)?\s", line.strip(), maxsplit=1)[0]
        elif thread is not None:
            parts = line.split(None, 1)
            if len(parts) == 2:
                symbol = re.sub(r"\s*\([^()]*\)$", "", parts[1])
                frames.append(re.sub(r"\+0x[0-9a-f]+$", "", symbol))
    if thread is not None:
        yield thread, frames


def main():
    stages = [(name, re.compile(pattern)) for name, pattern in STAGES]
    total = 0
    by_stage = collections.Counter()
    by_thread = collections.Counter()
    by_self = collections.Counter()
    for thread, frames in samples(sys.stdin):
        total += 1
        by_thread[re.sub(r"-?\d+$", "", thread)] += 1
        by_self[frames[0][:100] if frames else "?"] += 1
        for name, pattern in stages:
            if any(pattern.search(frame) for frame in frames):
                by_stage[name] += 1
    if total == 0:
        print("no samples")
        return
    share = lambda n: f"{100 * n / total:5.1f} %"
    print(f"{total} samples")
    print("stages (inclusive):")
    for name, _ in stages:
        print(f"  {share(by_stage[name])}  {name}")
    print("threads:")
    for name, n in by_thread.most_common(8):
        print(f"  {share(n)}  {name}")
    print("most self time:")
    for name, n in by_self.most_common(15):
        print(f"  {share(n)}  {name}")


if __name__ == "__main__":
    main()
