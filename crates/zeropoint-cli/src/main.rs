//! The `zeropoint` command: a thin layer over the zeropoint crates, argument parsing and printing
//! only. Each subcommand lives in its own module; this file parses arguments, runs one, and turns
//! any error into a single line on stderr (the error and its sources, joined by ": ") and a
//! non-zero exit.

mod data_args;
mod embedded;
mod eval;
mod explain;
mod graph;
mod inspect;
mod plot;
mod progress;
mod quantize;
mod range_args;
mod run;
mod scheme_args;
mod table;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

// Model runs allocate and free tensors of hundreds of MB: the system allocator returns them to
// the OS and page-faults them back on every node; mimalloc keeps them.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser)]
#[command(
    name = "zeropoint",
    version,
    about = "Neural-network quantization: explain, inspect and quantize tensors and models",
    long_about = None
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Show what a quantizer does to a range or to data: scale, zero-point, grid, errors.
    Explain(explain::Args),
    /// Statistics of every tensor of a file and the SQNR each quantization scheme gives it.
    Inspect(inspect::Args),
    /// Quantize a float ONNX model (post-training): calibrate, place quantizers, export QDQ.
    Quantize(quantize::Args),
    /// Compare a float model and its quantized version on data: accuracy, agreement, SQNR.
    Eval(eval::Args),
    /// Describe an ONNX model: inputs, outputs, shapes, operators, canonicalization.
    Graph(graph::Args),
    /// Run a float ONNX model with zeropoint's executor; write its outputs as .npy.
    Run(run::Args),
}

fn main() -> ExitCode {
    // A panic is a bug; still, the user gets one line, not a backtrace.
    std::panic::set_hook(Box::new(|info| {
        let msg = info
            .payload()
            .downcast_ref::<&str>()
            .map(|s| s.to_string())
            .or_else(|| info.payload().downcast_ref::<String>().cloned())
            .unwrap_or_default();
        // The reader of our output went away (`zeropoint ... | head`): stop quietly, as the
        // shell tools do.
        if msg.contains("Broken pipe") {
            std::process::exit(141);
        }
        let place = info
            .location()
            .map(|l| format!(" at {l}"))
            .unwrap_or_default();
        eprintln!("zeropoint: internal error{place}: {msg} (please report this)");
    }));
    let cli = Cli::parse();
    // Calibration runs whole samples in parallel (rayon), one slice of each batch per thread.
    // candle's own pool for element-wise operators would run beside it, and its idle workers
    // spin: on 2 cores that made calibration up to 2x slower. Other commands run one batch at a
    // time and keep candle's pool. Set before any thread starts; an explicit CANDLE_NUM_THREADS
    // wins.
    if matches!(cli.command, Command::Quantize(_))
        && std::env::var_os("CANDLE_NUM_THREADS").is_none()
    {
        std::env::set_var("CANDLE_NUM_THREADS", "1");
    }
    let result = match cli.command {
        Command::Explain(args) => explain::run(&args),
        Command::Inspect(args) => inspect::run(&args),
        Command::Run(args) => run::run(&args),
        Command::Graph(args) => graph::run(&args),
        Command::Quantize(args) => quantize::run(&args),
        Command::Eval(args) => eval::run(&args),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            let line = format!("{e:#}").replace('\n', " ");
            eprintln!("zeropoint: error: {line}");
            ExitCode::FAILURE
        }
    }
}
