//! The `keel` command line.

use clap::{Parser, Subcommand};
// The library sets the global allocator (mimalloc, feature `mimalloc`); a binary that names
// nothing of it would not link it.
use keel as _;

mod cluster;
mod recording;
mod replay;
mod sim;
mod walkthrough;

/// Keel: a distributed compute framework with a pure, deterministic scheduling kernel.
///
/// Keel schedules tasks, actors and objects over a cluster, survives failures through retries and
/// lineage reconstruction, and gang-schedules with placement groups. Every decision is made by a
/// pure state machine (the kernel) that runs the same way in a cluster, in simulation and in replay.
#[derive(Parser, Debug)]
#[command(name = "keel", version, about, long_about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Drive the kernel in-process: a head and four nodes step through a short job (map tasks
    /// with large outputs and a reduce, a GPU task, a placement group, an actor, an infeasible
    /// request), lose a node mid-job, and recover. Prints every decision the head makes.
    ///
    /// Example: `keel walkthrough --seed 7` or `keel walkthrough --json | jq .`
    Walkthrough(walkthrough::Args),
    /// Run a chaos scenario in the deterministic simulator (the built-in story without a file).
    Sim(sim::SimArgs),
    /// Run generated workloads under random faults, seed after seed (swarm testing).
    Chaos(sim::ChaosArgs),
    Replay(replay::ReplayArgs),
    Head(cluster::HeadArgs),
    Node(cluster::NodeArgs),
    Up(cluster::UpArgs),
    Status(cluster::StatusArgs),
    Submit(cluster::SubmitArgs),
    Stop(cluster::StopArgs),
    /// The worker process for command tasks; nodes start it.
    #[command(hide = true)]
    Worker,
}

fn main() -> std::process::ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Walkthrough(args) => walkthrough::run(&args),
        Command::Sim(args) => sim::run_sim(&args),
        Command::Chaos(args) => sim::run_chaos(&args),
        Command::Replay(args) => replay::run_replay(&args),
        Command::Head(args) => cluster::run_head(&args),
        Command::Node(args) => cluster::run_node(&args),
        Command::Up(args) => cluster::run_up(&args),
        Command::Status(args) => cluster::run_status(&args),
        Command::Submit(args) => match cluster::run_submit(&args) {
            Ok(code) => return std::process::ExitCode::from(code),
            Err(e) => Err(e),
        },
        Command::Stop(args) => cluster::run_stop(&args),
        Command::Worker => cluster::run_worker(),
    };
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(message) => {
            eprintln!("keel: {message}");
            std::process::ExitCode::FAILURE
        }
    }
}
