//! clusterserverd: the ATM / cluster-node daemon.
fn main() -> anyhow::Result<()> {
    anyhow::bail!("clusterserverd: not yet implemented")
}
