fn main() -> Result<(), Box<dyn std::error::Error>> {
    if std::env::var_os("PROTOC").is_none() {
        let protoc = protoc_bin_vendored::protoc_bin_path()?;
        // SAFETY: build scripts are single-threaded at this point.
        unsafe { std::env::set_var("PROTOC", protoc) };
    }
    println!("cargo:rerun-if-changed=apache");
    println!("cargo:rerun-if-changed=raftmq");
    tonic_prost_build::configure()
        // Message bodies are shared, not copied, on their way from the wire into the log.
        .bytes(".")
        .compile_protos(
            &[
                "apache/rocketmq/v2/service.proto",
                "apache/rocketmq/v2/admin.proto",
                "raftmq/raft/v1/raft.proto",
                "raftmq/admin/v1/admin.proto",
            ],
            &["."],
        )?;
    Ok(())
}
