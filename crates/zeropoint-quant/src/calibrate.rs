//! Calibration: the float model runs on the calibration data batch by batch, an observer per
//! planned activation watches every batch through the executor's hook, and each observer's
//! estimator (MSE, percentile, entropy, ...) then picks that activation's clipping range.

use std::collections::{HashMap, HashSet};

use rayon::prelude::*;

use zeropoint_core::observer::{Config, Method, Observer};
use zeropoint_engine::exec::HookError;
use zeropoint_engine::infer::{probe_with, Run};
use zeropoint_engine::{Executor, Value};
use zeropoint_graph::{Graph, Op};
use zeropoint_onnx::DType;

use crate::compare::next_batches;
use crate::dataset::{batch_for, Dataset};
use crate::error::{Error, Result};
use crate::placement::Plan;
use crate::settings::Settings;

/// The calibrated (clipping) range of every activation with its own observer, in plan order.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Ranges(pub Vec<(String, (f32, f32))>);

/// Streams `data` through the float model and returns each planned activation's range.
/// `progress` is called with the number of samples done after each batch.
pub fn calibrate(
    graph: &Graph,
    plan: &Plan,
    data: &mut Dataset,
    settings: &Settings,
    progress: &mut dyn FnMut(usize),
) -> Result<Ranges> {
    let observers = observe(graph, plan, data, settings, progress)?;
    ranges(graph, plan, &observers, settings)
}

/// Streams `data` through the float model, feeding an observer per planned activation.
pub fn observe(
    graph: &Graph,
    plan: &Plan,
    data: &mut Dataset,
    settings: &Settings,
    progress: &mut dyn FnMut(usize),
) -> Result<HashMap<String, Observer>> {
    observe_from(Vec::new(), graph, plan, data, settings, progress)
}

/// Live activations one calibration batch may hold, per thread. A run holds each value from the
/// node computing it to its last reader; at 32 samples a batch, malviz-resnet18 (224² images)
/// peaked at 842 MB, against 312 MB on 16 samples and ONNX Runtime's 339, and 1-sample batches
/// calibrated it as fast.
pub const BATCH_BYTES: usize = 32 << 20;

/// The samples per calibration batch: at most `wanted` (and the batch an input fixes, see
/// [`batch_for`]), fewer where a batch's live activations would pass [`BATCH_BYTES`], at least
/// the unit batch. `sizes` are every value's element counts and `types` their element types on
/// one unit batch (the probe's).
pub fn batch_within_budget(
    graph: &Graph,
    (sizes, types): (&HashMap<String, usize>, &HashMap<String, DType>),
    wanted: usize,
) -> usize {
    let unit = crate::dataset::unit_batch(&graph.inputs);
    if crate::dataset::fixed_batch(&graph.inputs).is_some() {
        return batch_for(&graph.inputs, wanted);
    }
    let per_unit = peak_live_bytes(graph, sizes, types).max(1);
    let fits = (BATCH_BYTES / per_unit).max(1) * unit;
    fits.clamp(unit, wanted.max(unit))
}

/// The most bytes of activations a run of `graph` in node order holds at once: inputs and
/// node outputs, each from its computation to its last reader (graph outputs to the end).
fn peak_live_bytes(
    graph: &Graph,
    sizes: &HashMap<String, usize>,
    types: &HashMap<String, DType>,
) -> usize {
    let bytes = |v: &str| {
        let size = types.get(v).map_or(4, |t| t.size().max(1));
        sizes.get(v).map_or(0, |&n| n * size)
    };
    let mut last: HashMap<&str, usize> = HashMap::new();
    for (i, node) in graph.nodes.iter().enumerate() {
        node.inputs.iter().for_each(|v| {
            last.insert(v, i);
        });
    }
    for o in &graph.outputs {
        last.insert(&o.name, graph.nodes.len());
    }
    let mut held: HashMap<&str, usize> = (graph.inputs.iter())
        .map(|i| (i.name.as_str(), bytes(&i.name)))
        .collect();
    let mut live: usize = held.values().sum();
    let mut peak = live;
    for (i, node) in graph.nodes.iter().enumerate() {
        for o in &node.outputs {
            if !held.contains_key(o.as_str()) {
                held.insert(o, bytes(o));
                live += bytes(o);
            }
        }
        peak = peak.max(live);
        for v in node.inputs.iter().chain(&node.outputs) {
            if last.get(v.as_str()).is_none_or(|&l| l <= i) {
                live -= held.remove(v.as_str()).unwrap_or(0);
            }
        }
    }
    peak
}

/// Calibration's threads: one per core, each observing whole batches; one for the moving
/// average, whose result depends on the order of the batches.
pub fn workers(settings: &Settings) -> usize {
    if merges_exactly(settings) {
        rayon::current_num_threads().max(1)
    } else {
        1
    }
}

/// Whether observers fed batches apart and merged equal one fed them all: every estimator but
/// the moving average (docs/ranges.md).
pub fn merges_exactly(settings: &Settings) -> bool {
    !matches!(settings.activation_method, Method::MovingAverage { .. })
}

/// An observer per activation of `watched`: min-max for the `gates` ([`gates`]), the
/// settings' estimator for the rest.
fn fresh_observers(
    graph: &Graph,
    watched: &[String],
    (settings, gates): (&Settings, &HashSet<&str>),
) -> Result<HashMap<String, Observer>> {
    watched
        .iter()
        .map(|a| {
            let method = if gates.contains(a.as_str()) {
                Method::MinMax
            } else {
                settings.activation_method
            };
            Ok((a.clone(), fresh_observer(graph, method)?))
        })
        .collect()
}

/// An activation observer of `method`, empty.
fn fresh_observer(graph: &Graph, method: Method) -> Result<Observer> {
    Observer::new(Config::new(method))
        .map_err(|e| Error::at(&graph.source, "the activation range estimator", e))
}

/// The gates whose range is their extremes under the MSE estimator (the default): Sigmoid
/// outputs that only Muls read (a SiLU's x · σ(x), an LSTM-style cell's σ(a) · c). A gate's
/// error reaches the model multiplied by what it gates, which is largest where the gate
/// saturates near 0 and 1, so an MSE fit to the gate alone would weigh its extremes too little.
/// It kept them anyway: on the 160 SiLU gates of isbnx-yolo26n and ddddocr-det (64 samples)
/// the MSE range ended within a histogram bin of the maximum (0.9994 where the gate reaches
/// 1.0). Min-max skips a histogram of a third of the values those detectors' calibration
/// counts (9.5M of 33M a 416² image: 7 % of quantizing ddddocr-det). Other estimators are the
/// user's choice and apply to gates too.
fn gates<'g>(graph: &'g Graph, settings: &Settings) -> HashSet<&'g str> {
    if !matches!(settings.activation_method, Method::Mse { .. }) {
        return HashSet::new();
    }
    let consumers = graph.consumers();
    let outputs: HashSet<&str> = graph.outputs.iter().map(|o| o.name.as_str()).collect();
    graph
        .nodes
        .iter()
        .filter(|n| n.op == Op::Sigmoid)
        .filter_map(|n| n.outputs.first().map(String::as_str))
        .filter(|s| {
            let readers = consumers.get(*s).map_or(&[][..], Vec::as_slice);
            !outputs.contains(s)
                && !readers.is_empty()
                && readers.iter().all(|&i| graph.nodes[i].op == Op::Mul)
        })
        .collect()
}

/// The probe that placement needs (every value's element type and shape, on the first batch)
/// run as calibration's first round: beside it a few more samples are observed, each alone and
/// in parallel where there are threads, and the probe's run feeds observers too. Placement is
/// not known yet, so the observers are those of `watched`, a plan made before the types were:
/// [`FirstRound::observers_for`] keeps what the real plan needs. The probe alone was one model
/// run in 33 of quantizing ppocr-v3-det on 16 samples (16 to calibrate, 8 float and 8
/// simulated to report), with the second core mostly idle.
pub struct FirstRound {
    /// Per batch, in order, its observers.
    sets: Vec<HashMap<String, Observer>>,
    /// Values an observer refused (a NaN or ±Inf): a plan that needs one calibrates anew, and
    /// fails there as it always did.
    refused: HashSet<String>,
}

impl FirstRound {
    /// Runs `batches` (the first is the probe's; at least one) in parallel. Returns each
    /// value's element type and shape in the probe, as [`zeropoint_engine::infer::probe_on`],
    /// and the round.
    pub fn run(
        graph: &Graph,
        watched: &[String],
        batches: Vec<HashMap<String, Value>>,
        settings: &Settings,
    ) -> Result<(Run, FirstRound)> {
        let exec = Executor::new(graph)?;
        let gates = gates(graph, settings);
        let fresh = || fresh_observers(graph, watched, (settings, &gates));
        let sets: Vec<HashMap<String, Observer>> =
            batches.iter().map(|_| fresh()).collect::<Result<_>>()?;
        let runs: Vec<Result<_>> = batches
            .into_par_iter()
            .zip(sets)
            .enumerate()
            .map(|(i, (batch, mut observers))| {
                let mut refused = HashSet::new();
                let mut watch = |name: &str, v: &Value| {
                    let Some(obs) = observers.get_mut(name) else {
                        return;
                    };
                    let taken = v.dtype == DType::F32
                        && !refused.contains(name)
                        && matches!(v.with_f32s(|x| obs.update(x, v.shape())), Ok(Ok(())));
                    if !taken {
                        refused.insert(name.to_string());
                    }
                };
                let seen = if i == 0 {
                    Some(probe_with(&exec, batch, &mut watch)?)
                } else {
                    exec.run_with(batch, &mut |name, v| {
                        watch(name, &v);
                        Ok(v)
                    })?;
                    None
                };
                Ok((seen, observers, refused))
            })
            .collect::<Vec<Result<_>>>();
        let mut seen = Run::new();
        let mut round = FirstRound {
            sets: Vec::new(),
            refused: HashSet::new(),
        };
        // In batch order: where several fail, the error is the first batch's (the probe's,
        // which names shape inference), whatever thread finished first.
        for run in runs {
            let (probed, observers, refused) = run?;
            seen.extend(probed.unwrap_or_default());
            round.sets.push(observers);
            round.refused.extend(refused);
        }
        Ok((seen, round))
    }

    /// The observers of `plan`'s activations, one set per batch; None when the plan needs one
    /// that was not watched or that refused its batch.
    pub fn observers_for(self, plan: &Plan) -> Option<Vec<HashMap<String, Observer>>> {
        let watched = |a: &String| self.sets.iter().all(|s| s.contains_key(a));
        if !plan
            .activations
            .iter()
            .all(|a| watched(a) && !self.refused.contains(a))
        {
            return None;
        }
        let planned: HashSet<&String> = plan.activations.iter().collect();
        let mut sets = self.sets;
        for set in &mut sets {
            set.retain(|name, _| planned.contains(name));
        }
        Some(sets)
    }
}

/// [`observe`], going on from `first`: observers already fed with the batches before those left
/// in `data`, merged in.
pub fn observe_from(
    first: Vec<HashMap<String, Observer>>,
    graph: &Graph,
    plan: &Plan,
    data: &mut Dataset,
    settings: &Settings,
    progress: &mut dyn FnMut(usize),
) -> Result<HashMap<String, Observer>> {
    let exec = Executor::new(graph)?;
    let gates = gates(graph, settings);
    let unions = concat_unions(graph, plan, (settings, &gates));
    let derived: HashSet<&str> = unions.iter().map(|(c, _)| c.as_str()).collect();
    let watched: Vec<String> = (plan.activations.iter())
        .filter(|a| !derived.contains(a.as_str()))
        .cloned()
        .collect();
    let fresh = || fresh_observers(graph, &watched, (settings, &gates));
    // Each thread runs its own slice of every batch into its own observers, merged at the end:
    // the executor's operators scale poorly across threads on small images, whole samples do.
    let workers = workers(settings);
    let mut sets = first;
    for set in &mut sets {
        set.retain(|name, _| !derived.contains(name.as_str()));
    }
    while sets.len() < workers {
        sets.push(fresh()?);
    }
    loop {
        // One batch per thread.
        let batches = next_batches(data, batch_for(&graph.inputs, settings.batch), workers)?;
        if batches.is_empty() {
            break;
        }
        sets.par_iter_mut()
            .zip(batches)
            .try_for_each(|(observers, batch)| {
                exec.run_with(batch, &mut |name, v| {
                    if let Some(obs) = observers.get_mut(name) {
                        v.with_f32s(|x| observe_finite(obs, x, v.shape()))??;
                    }
                    Ok(v)
                })
                .map(|_| ())
            })?;
        progress(data.consumed());
    }
    let mut observers = sets.remove(0);
    for other in sets {
        for (name, obs) in observers.iter_mut() {
            if let Some(o) = other.get(name).filter(|o| o.state_bytes() > 0) {
                obs.merge(o)
                    .map_err(|e| Error::at(&graph.source, format!("activation '{name}'"), e))?;
            }
        }
    }
    for (concat, inputs) in unions {
        let mut union = fresh_observer(graph, settings.activation_method)?;
        for input in &inputs {
            // Every input has an observer: planned, and made before (graph order).
            let Some(part) = observers.get(input) else {
                let why = format!("activation '{concat}': its input '{input}' was never observed");
                return Err(Error::new(&graph.source, why));
            };
            union
                .merge(part)
                .map_err(|e| Error::at(&graph.source, format!("activation '{concat}'"), e))?;
        }
        observers.insert(concat, union);
    }
    Ok(observers)
}

/// The planned Concat outputs whose inputs all have observers of their own, with those inputs:
/// a Concat's output holds its inputs' values and nothing else, so its observer is theirs
/// merged, exactly (histograms add bin by bin at a common width; see
/// `zeropoint_core::observer::histogram`), and need not watch the output: on YOLO-style
/// detectors Concat outputs were an eighth of the values calibration observes (isbnx-yolo26n:
/// 7.3M of 57M a 640² image). In graph order, so that a Concat of Concats finds its inputs'
/// observers made. None where an observer is not a merge of its batches' (moving average) or
/// depends on the tensor's shape (cross-entropy rows along the last axis).
fn concat_unions(
    graph: &Graph,
    plan: &Plan,
    (settings, gates): (&Settings, &HashSet<&str>),
) -> Vec<(String, Vec<String>)> {
    if !merges_exactly(settings) || settings.activation_method == Method::CrossEntropy {
        return Vec::new();
    }
    // A gate's min-max observer does not merge into a histogram.
    let own: HashSet<&str> = (plan.activations.iter())
        .map(String::as_str)
        .filter(|a| !gates.contains(a))
        .collect();
    graph
        .nodes
        .iter()
        .filter(|n| n.op == Op::Concat && !n.inputs.is_empty())
        .filter_map(|n| {
            let out = n.outputs.first().filter(|o| own.contains(o.as_str()))?;
            n.inputs
                .iter()
                .all(|i| i != out && own.contains(i.as_str()))
                .then(|| (out.clone(), n.inputs.clone()))
        })
        .collect()
}

/// Feeds one activation to its observer; NaN or ±Inf stops calibration (the data is wrong).
/// Every observer refuses a batch holding one before taking any of it, so the search for the
/// value to name runs only then (a pass of its own over every activation was 1.7 % of
/// quantizing ddddocr-det).
fn observe_finite(obs: &mut Observer, x: &[f32], shape: &[usize]) -> Result<(), HookError> {
    obs.update(x, shape)
        .map_err(|e| match zeropoint_core::kernel::first_non_finite(x) {
            Some(bad) => {
                format!("activation has a non-finite value ({bad}): check the data").into()
            }
            None => e.into(),
        })
}

/// Each observer's range for the activation scheme. Range searches (MSE, entropy) are
/// independent and can take milliseconds each: they run in parallel.
pub fn ranges(
    graph: &Graph,
    plan: &Plan,
    observers: &HashMap<String, Observer>,
    settings: &Settings,
) -> Result<Ranges> {
    ranges_as(graph, plan, observers, settings, None)
}

/// [`ranges`], by `method` where an observer's histograms can answer it (`zeropoint analyze`
/// scores other estimators without another calibration pass); other observers (a logit's
/// cross-entropy rows) give their own.
pub fn ranges_as(
    graph: &Graph,
    plan: &Plan,
    observers: &HashMap<String, Observer>,
    settings: &Settings,
    method: Option<&Method>,
) -> Result<Ranges> {
    let ranges: Vec<(f32, f32)> = plan
        .activations
        .par_iter()
        .map(|a| {
            let obs = observers.get(a).ok_or_else(|| {
                Error::new(
                    &graph.source,
                    format!("activation '{a}' was never computed"),
                )
            })?;
            let scheme = settings.activation_scheme(a);
            method
                .map_or_else(|| obs.ranges(&scheme), |m| obs.ranges_by(m, &scheme))
                .map(|r| r[0])
                .map_err(|e| Error::at(&graph.source, format!("activation '{a}'"), e))
        })
        .collect::<Result<_>>()?;
    Ok(Ranges(
        plan.activations.iter().cloned().zip(ranges).collect(),
    ))
}

#[cfg(test)]
mod tests {
    use zeropoint_graph::{Dim, Node, Op, ValueInfo};

    use super::*;

    /// x → a → b → y with a read again at the end (a skip): a, b and y are held together at
    /// the last node, x is freed after its one reader.
    fn chain(batch: Dim) -> (Graph, HashMap<String, usize>, HashMap<String, DType>) {
        let graph = Graph {
            source: "m.onnx".into(),
            opset: 17,
            inputs: vec![ValueInfo {
                name: "x".into(),
                dtype: Some(DType::F32),
                shape: Some(vec![batch, Dim::Fixed(100)]),
            }],
            outputs: vec![ValueInfo {
                name: "y".into(),
                dtype: None,
                shape: None,
            }],
            initializers: Vec::new(),
            nodes: vec![
                Node::new("n0", Op::Relu, &["x"], &["a"]),
                Node::new("n1", Op::Relu, &["a"], &["b"]),
                Node::new("n2", Op::Add, &["a", "b"], &["y"]),
            ],
        };
        let sizes = [("x", 100), ("a", 1000), ("b", 2000), ("y", 3000)];
        let sizes = sizes.map(|(n, s)| (n.to_string(), s)).into_iter().collect();
        let types = ["x", "a", "b", "y"].map(|n| (n.to_string(), DType::F32));
        (graph, sizes, types.into_iter().collect())
    }

    /// Observers of a Concat (of two activations, one of them twice) and of what reads it,
    /// on three batches of four samples; `planned` are the activations with observers.
    fn concat_observers(planned: &[&str], method: Method) -> HashMap<String, Observer> {
        let input = |name: &str| ValueInfo {
            name: name.into(),
            dtype: Some(DType::F32),
            shape: Some(vec![Dim::Sym("N".into()), Dim::Fixed(5)]),
        };
        let mut concat = Node::new("cat", Op::Concat, &["a", "b", "a"], &["c"]);
        concat
            .attributes
            .push(zeropoint_graph::graph::int_attribute("axis", 1));
        let graph = Graph {
            source: "m.onnx".into(),
            opset: 17,
            inputs: vec![input("x")],
            outputs: vec![input("y")],
            initializers: Vec::new(),
            nodes: vec![
                Node::new("relu", Op::Relu, &["x"], &["a"]),
                Node::new("neg", Op::Neg, &["x"], &["b"]),
                concat,
                Node::new("twice", Op::Add, &["c", "c"], &["y"]),
            ],
        };
        let plan = Plan {
            weights: Vec::new(),
            biases: Vec::new(),
            activations: planned.iter().map(|a| a.to_string()).collect(),
            shared: Vec::new(),
        };
        // Growing magnitudes, so that later batches widen the histograms.
        let values: Vec<f32> = (0..60)
            .map(|i| ((i * 37 % 23) as f32 - 7.5) * (1.0 + i as f32 / 9.0))
            .collect();
        let x = zeropoint_onnx::RawTensor::from_f32s("x", &[12, 5], &values);
        let mut data = Dataset::from_arrays(vec![("x".into(), x.into())], &graph.inputs).unwrap();
        let mut settings = Settings::preset(crate::settings::Preset::W8A8);
        (settings.activation_method, settings.batch) = (method, 4);
        observe(&graph, &plan, &mut data, &settings, &mut |_| {}).unwrap()
    }

    /// A Concat whose inputs have observers gets theirs merged instead of watching its
    /// output: the same observer, bin for bin, as watching it, for every estimator that
    /// merges; one whose input has none (or under the moving average) watches it.
    #[test]
    fn a_concat_observer_is_its_inputs_merged() {
        for method in [
            Method::MinMax,
            Method::Mse { norm: 2.0 },
            Method::Percentile {
                lower: 1.0,
                upper: 99.0,
            },
            Method::MovingAverage { momentum: 0.9 },
        ] {
            let watched = concat_observers(&["c", "y"], method);
            for planned in [&["a", "b", "c", "y"][..], &["b", "c", "y"]] {
                let other = concat_observers(planned, method);
                assert_eq!(other["c"], watched["c"], "{method:?} {planned:?}");
                assert_eq!(other["y"], watched["y"], "{method:?} {planned:?}");
            }
        }
    }

    /// Under MSE a SiLU's gate (a Sigmoid output only a Mul reads) is observed by its extremes
    /// alone, and its range is [min, max]; a Sigmoid that is a graph output keeps the
    /// histogram, and so does every gate under another estimator.
    #[test]
    fn a_gate_keeps_its_extremes_under_mse() {
        let info = |name: &str| ValueInfo {
            name: name.into(),
            dtype: Some(DType::F32),
            shape: Some(vec![Dim::Sym("N".into()), Dim::Fixed(500)]),
        };
        let graph = Graph {
            source: "m.onnx".into(),
            opset: 17,
            inputs: vec![info("x")],
            outputs: vec![info("p")],
            initializers: Vec::new(),
            nodes: vec![
                Node::new("gate", Op::Sigmoid, &["x"], &["s"]),
                Node::new("silu", Op::Mul, &["x", "s"], &["y"]),
                Node::new("head", Op::Sigmoid, &["y"], &["p"]),
            ],
        };
        let plan = Plan {
            weights: Vec::new(),
            biases: Vec::new(),
            activations: ["s", "y", "p"].map(String::from).to_vec(),
            shared: Vec::new(),
        };
        // Mostly near 0, a few far out.
        let values: Vec<f32> = (0..4000)
            .map(|i| match i % 1000 {
                0 => 12.0,
                1 => -12.0,
                k => (k % 100) as f32 / 100.0 - 0.5,
            })
            .collect();
        for (method, gate_histogram) in [
            (Method::Mse { norm: 2.0 }, false),
            (
                Method::Percentile {
                    lower: 1.0,
                    upper: 99.0,
                },
                true,
            ),
        ] {
            let x = zeropoint_onnx::RawTensor::from_f32s("x", &[8, 500], &values);
            let mut data =
                Dataset::from_arrays(vec![("x".into(), x.into())], &graph.inputs).unwrap();
            let mut settings = Settings::preset(crate::settings::Preset::W8A8);
            (settings.activation_method, settings.batch) = (method, 4);
            let observers = observe(&graph, &plan, &mut data, &settings, &mut |_| {}).unwrap();
            assert_eq!(
                observers["s"].has_histograms(),
                gate_histogram,
                "{method:?}"
            );
            assert!(observers["y"].has_histograms() && observers["p"].has_histograms());
            let ranges = ranges(&graph, &plan, &observers, &settings).unwrap();
            let (lo, hi) = ranges.0[0].1;
            let sigmoid = |v: f32| 1.0 / (1.0 + (-v).exp());
            if !gate_histogram {
                assert!((hi - sigmoid(12.0)).abs() < 1e-6, "{hi}");
                assert!(lo <= sigmoid(-12.0), "{lo}");
                // Where MSE, fitted to the gate alone, lands: next to the extremes, as on
                // the detectors.
                let gate: Vec<f32> = values.iter().map(|&v| sigmoid(v)).collect();
                let mut mse = Observer::new(Config::new(method)).unwrap();
                mse.update(&gate, &[8, 500]).unwrap();
                let fitted = mse.ranges(&settings.activation_scheme("s")).unwrap()[0].1;
                assert!(fitted <= hi && fitted > 0.99 * hi, "MSE alone: {fitted}");
            } else {
                assert!(hi < 0.9, "percentile clips the gate: {hi}");
            }
        }
    }

    #[test]
    fn the_peak_holds_what_later_nodes_still_read() {
        let (graph, sizes, types) = chain(Dim::Sym("N".into()));
        // At n2: a (4000 bytes), b (8000) and y (12 000); x was freed after n0.
        assert_eq!(peak_live_bytes(&graph, &sizes, &types), 24_000);
    }

    /// The batch is as many samples as fit the budget, between one and the wanted count; an
    /// input that fixes the batch decides it.
    #[test]
    fn batches_hold_what_the_budget_allows() {
        let (graph, mut sizes, types) = chain(Dim::Sym("N".into()));
        assert_eq!(batch_within_budget(&graph, (&sizes, &types), 32), 32);
        sizes.insert("y".into(), BATCH_BYTES / 4 / 5);
        let fit = batch_within_budget(&graph, (&sizes, &types), 32);
        assert!((4..5).contains(&fit), "{fit}");
        sizes.insert("y".into(), BATCH_BYTES);
        assert_eq!(batch_within_budget(&graph, (&sizes, &types), 32), 1);
        let (fixed, sizes, types) = chain(Dim::Fixed(3));
        assert_eq!(batch_within_budget(&fixed, (&sizes, &types), 32), 3);
    }
}
