//! wgmesh-operator binary: `run` (default) or `crdgen`.

use wgmesh_operator::cli::{self, Command, USAGE};
use wgmesh_operator::{crdgen, run};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match cli::parse(&args, &|k| std::env::var(k).ok())? {
        Command::Crdgen => {
            print!("{}", crdgen::crd_yaml()?);
            Ok(())
        }
        Command::Help => {
            print!("{USAGE}");
            Ok(())
        }
        Command::Run(a) => {
            run::init_logging(a.json_logs);
            run::run(a).await
        }
    }
}
