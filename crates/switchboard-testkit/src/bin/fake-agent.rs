//! `fake-agent`: the scripted stream-json agent of `switchboard_testkit::fake_agent`.

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("fake-agent: {e}");
            std::process::exit(2);
        }
    };
    let status = match runtime.block_on(switchboard_testkit::fake_agent::run(args)) {
        Ok(status) => status,
        Err(e) => {
            eprintln!("fake-agent: {e:#}");
            2
        }
    };
    // Exit at once: a runtime waits for its blocking stdin read on shutdown, and the
    // bridge keeps the agent's stdin open.
    std::process::exit(status);
}
