use clap::{Parser, Subcommand};

/// Kubernetes operator for Elastic's ML-DGA (domain generation algorithm) detection package.
#[derive(Parser)]
#[command(name = "dga-operator", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Print the DgaModel CustomResourceDefinition as YAML.
    Crd,
}

fn main() {
    let cli = Cli::parse();
    match cli.command {
        Command::Crd => print!("{}", dga_operator::api::crd_yaml()),
    }
}
