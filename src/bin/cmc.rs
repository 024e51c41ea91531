//! cmc: the Cluster Management Console.
fn main() -> anyhow::Result<()> {
    // `cmc sync ...` (issue 7): the sync tools live in `clusterserver::synctool::push`.
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.first().map(String::as_str) == Some("sync") {
        std::process::exit(clusterserver::synctool::push::cli(&args[1..]));
    }
    anyhow::bail!("cmc: not yet implemented")
}
