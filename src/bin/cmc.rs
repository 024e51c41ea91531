//! cmc: the Cluster Management Console.
fn main() -> anyhow::Result<()> {
    anyhow::bail!("cmc: not yet implemented")
}
