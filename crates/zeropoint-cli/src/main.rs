//! The `zeropoint` command: a thin layer over the zeropoint crates, argument parsing and printing
//! only. Each subcommand lives in its own module; this file parses arguments, runs one, and turns
//! any error into a single line on stderr (the error and its sources, joined by ": ") and a
//! non-zero exit.

mod analysis_html;
mod analyze;
mod data_args;
mod dynamic;
mod embedded;
mod equalize;
mod eval;
mod explain;
mod gguf;
mod graph;
mod inspect;
mod output;
mod plot;
mod progress;
mod quant_args;
mod quantize;
mod range_args;
mod run;
mod scheme_args;
mod scores;
mod smoothing;
mod table;
mod train;
mod vnni;
mod weight_only;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

// Model runs allocate and free tensors of hundreds of MB: the system allocator returns them to
// the OS and page-faults them back on every node; mimalloc keeps them.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

// mimalloc's C API, linked through the mimalloc crate, which does not wrap it.
unsafe extern "C" {
    fn mi_option_set(option: std::ffi::c_int, value: std::ffi::c_long);
    fn mi_collect(force: bool);
}

/// `mi_option_purge_delay` in mimalloc's headers (v2 and v3).
const MI_OPTION_PURGE_DELAY: std::ffi::c_int = 15;

/// Keeps the memory mimalloc frees instead of returning it to the OS after its purge delay.
/// A training step allocates and frees the same large activations and gradients every step;
/// returned, they page-fault back in, zero-filled, on the next one: a third of a PP-LCNet step at
/// 224×224 went to page faults, and without purging an epoch of 256 crops at 2 threads takes
/// 24.2 instead of 36.3 s, for 4 % more peak memory (2.81 GB against 2.69). Calibration does not
/// repeat like that (quantize's peak grew 17 % on PP-LCNet for 5 % less time), so only `train`
/// keeps it.
fn keep_freed_memory() {
    // SAFETY: mi_option_set only stores an option value, valid to call at any time.
    unsafe { mi_option_set(MI_OPTION_PURGE_DELAY, -1) }
}

/// Returns freed memory to the OS at once instead of after mimalloc's purge delay. The
/// transformer modes allocate few, large tensors (a weight, its copy, its codes) and free each
/// soon: kept, the freed ones stacked up to the peak. GPTQ of stories15M (98 MB of weights)
/// peaked at 294-312 MB and took 4.4 s; released at once, 210 MB and 5.0 s. Dynamic
/// quantization of it: 389 → 281 MB, 0.5 → 0.7 s.
pub(crate) fn release_freed_memory_at_once() {
    // SAFETY: as in keep_freed_memory.
    unsafe { mi_option_set(MI_OPTION_PURGE_DELAY, 0) }
}

/// Returns the memory mimalloc holds freed to the OS now. Between the stages of a quantization
/// (each builds its own executors of the whole model, then drops them), the next stage's
/// allocations otherwise land beside what the last one freed or on top of it, depending on
/// thread timing: ddddocr-ocr's quantize peaked at 278-335 MB over five runs, against 195 MB
/// of live memory.
pub(crate) fn return_freed_memory() {
    // SAFETY: mi_collect only frees memory mimalloc no longer hands out; valid at any time.
    unsafe { mi_collect(true) }
}

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
    /// The most memory one tensor, file read or batch may take: 8G, 512M, 1.5G (binary units) or
    /// bytes. Anything a file asks for beyond it is refused before it is allocated. Default: 3/4
    /// of physical memory.
    #[arg(long, global = true, value_name = "SIZE", value_parser = parse_size)]
    max_memory: Option<u64>,
}

/// "8G", "512M", "1.5GiB", "64k" or a number of bytes.
fn parse_size(s: &str) -> Result<u64, String> {
    let t = s.trim();
    let digits = t
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(t.len());
    let (number, unit) = t.split_at(digits);
    let shift = match unit
        .trim()
        .to_ascii_lowercase()
        .trim_end_matches("ib")
        .trim_end_matches('b')
    {
        "" => 0,
        "k" => 10,
        "m" => 20,
        "g" => 30,
        "t" => 40,
        _ => return Err(format!("'{s}' is not a size like 8G, 512M or 1048576")),
    };
    let v: f64 = number
        .parse()
        .map_err(|_| format!("'{s}' is not a size like 8G, 512M or 1048576"))?;
    let bytes = v * (1u64 << shift) as f64;
    if !(1.0..1.8e19).contains(&bytes) {
        return Err(format!("'{s}' is not a usable memory limit"));
    }
    Ok(bytes as u64)
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
    /// The white paper's debugging flow: which quantizers hurt, why, and which fixes help
    /// (measured), as a table, JSON and a self-contained HTML report.
    Analyze(analyze::Args),
    /// Quantization-aware training from the PTQ result, exported as a QDQ model.
    Train(train::Args),
    /// Cross-layer equalization of a float model (what `quantize --cle` does first), written
    /// as a float model.
    Equalize(equalize::Args),
    /// Describe an ONNX model: inputs, outputs, shapes, operators, canonicalization.
    Graph(graph::Args),
    /// Run a float ONNX model with zeropoint's executor; write its outputs as .npy.
    Run(run::Args),
    /// Quantize a GGUF language model to llama.cpp's formats (Q8_0, Q4_K_M, ...), as
    /// llama-quantize does.
    Gguf(gguf::Args),
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
    if let Some(bytes) = cli.max_memory {
        zeropoint_onnx::limits::set_max_bytes(bytes);
    }
    // Calibration runs whole samples in parallel (rayon), one slice of each batch per thread.
    // candle's own pool for element-wise operators would run beside it, and its idle workers
    // spin: on 2 cores that made calibration up to 2x slower, and a training epoch (whose
    // backward pass is candle's) 2x slower too (8.3 vs 4.0 s, the embedded MNIST CNN, the
    // same bytes out). Other commands run one batch at a time and keep candle's pool. Set
    // before any thread starts; an explicit CANDLE_NUM_THREADS wins.
    if matches!(
        cli.command,
        Command::Quantize(_) | Command::Analyze(_) | Command::Train(_)
    ) && std::env::var_os("CANDLE_NUM_THREADS").is_none()
    {
        std::env::set_var("CANDLE_NUM_THREADS", "1");
    }
    zeropoint_engine::ops::fix_thread_count();
    if matches!(cli.command, Command::Train(_)) {
        keep_freed_memory();
    }
    let result = match cli.command {
        Command::Explain(args) => explain::run(&args),
        Command::Inspect(args) => inspect::run(&args),
        Command::Run(args) => run::run(&args),
        Command::Graph(args) => graph::run(&args),
        Command::Quantize(args) => quantize::run(&args),
        Command::Eval(args) => eval::run(&args),
        Command::Equalize(args) => equalize::run(&args),
        Command::Gguf(args) => gguf::run(&args),
        Command::Analyze(args) => analyze::run(&args),
        Command::Train(args) => train::run(&args),
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

#[cfg(test)]
mod tests {
    use super::parse_size;

    #[test]
    fn sizes_parse_in_binary_units() {
        assert_eq!(parse_size("8G"), Ok(8 << 30));
        assert_eq!(parse_size("512M"), Ok(512 << 20));
        assert_eq!(parse_size("1.5GiB"), Ok(3 << 29));
        assert_eq!(parse_size("64k"), Ok(64 << 10));
        assert_eq!(parse_size("1048576"), Ok(1 << 20));
        assert!(parse_size("lots").is_err());
        assert!(parse_size("0").is_err());
        assert!(parse_size("8X").is_err());
    }
}
