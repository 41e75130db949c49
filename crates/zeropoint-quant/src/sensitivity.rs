//! What each quantizer costs the model: the simulated model's output against the float model's
//! with one quantizer alone enabled, and with all but that one (the per-layer analysis of the
//! white paper's debugging flow, Nagel et al. 2021 §4.8, its Fig. 10).
//!
//! A quantizer here is what is switched on and off as one: a weight, with the int32 bias that
//! depends on it, or an activation with its own observer, with the values that share its grid.
//! A score is measured on the graph outputs only: the output SQNR (the mean, in dB, over the
//! float outputs, so that a small output counts as much as a large one) and, where the first
//! output holds class scores, the top-1 agreement with the float model.
//!
//! Two simulations per quantizer and sample are the cost of the debugging flow. They share
//! their beginnings: with only q enabled, every node before the first q acts on computes what
//! the float model does, and with all but q, what the fully quantized model does. Each sample's
//! float and fully quantized runs are paused at the quantizers' first nodes in graph order and
//! only the rest of each run is simulated with q's subset ([`Probe::forked_scores`]): the same
//! values as whole runs (a test compares them on every real model), in about half the time.

use std::collections::{HashMap, HashSet};
use std::sync::mpsc::Sender;

use rayon::prelude::*;
use serde::Serialize;

use zeropoint_core::metrics::Running;
use zeropoint_engine::exec::Paused;
use zeropoint_engine::{Executor, Value};
use zeropoint_graph::Graph;

use crate::compare::{Batch, Outputs};
use crate::error::Result;
use crate::evaluate::top;
use crate::params::Params;
use crate::placement::Plan;
use crate::simulate::Simulation;

/// A quantizer switched as one.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize)]
#[serde(tag = "kind", content = "name", rename_all = "snake_case")]
pub enum Quantizer {
    /// A weight initializer (and its bias).
    Weight(String),
    /// An activation with its own grid (and the values sharing it).
    Activation(String),
}

impl Quantizer {
    pub fn name(&self) -> &str {
        match self {
            Quantizer::Weight(n) | Quantizer::Activation(n) => n,
        }
    }
}

/// How close a simulated model's outputs are to the float model's.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Score {
    /// Output SQNR in dB: the mean over the float graph outputs (+inf when exact).
    pub sqnr_db: f64,
    /// Top-1 agreement with the float model, 0..=1: argmax over the last axis of the first
    /// output, when that axis has more than one element.
    pub agreement: Option<f64>,
}

/// The float model's outputs on a few samples, to score simulated models against.
pub struct Probe<'g> {
    graph: &'g Graph,
    batches: Vec<Batch>,
    float: Vec<Outputs>,
}

impl<'g> Probe<'g> {
    /// Runs the float model `reference` on `batches` (one sample each keeps the simulations
    /// small); `graph` is the one simulated: the same, or the same with AdaRound's weights or
    /// corrected biases.
    pub fn new(reference: &Graph, graph: &'g Graph, batches: Vec<Batch>) -> Result<Probe<'g>> {
        let exec = Executor::new(reference)?;
        let float = batches
            .iter()
            .map(|b| Ok(exec.run(b.clone())?))
            .collect::<Result<_>>()?;
        Ok(Probe {
            graph,
            batches,
            float,
        })
    }

    /// The graph simulated.
    pub fn graph(&self) -> &'g Graph {
        self.graph
    }

    /// The probe of the first `n` samples only.
    pub fn first(&self, n: usize) -> Probe<'g> {
        let n = n.min(self.batches.len());
        Probe {
            graph: self.graph,
            batches: self.batches[..n].to_vec(),
            float: self.float[..n].to_vec(),
        }
    }

    /// How many samples the scores are measured on.
    pub fn samples(&self) -> usize {
        self.batches.len()
    }

    /// The score of the model simulated with `params`.
    pub fn score(&self, params: &Params) -> Result<Score> {
        let sim = Simulation::new(self.graph, params)?;
        let mut tally = Tally::default();
        for (b, float) in self.batches.iter().zip(&self.float) {
            tally.add(float, &sim.run(b.clone(), &mut |_, _| {})?)?;
        }
        Ok(tally.score())
    }

    /// The score of the model with each quantizer of `qs` alone, in order: the nodes before the
    /// first that q acts on run once per sample, float, for all of them ([`Probe::forked_scores`]).
    pub fn alone(&self, qs: &[Quantizer], plan: &Plan, params: &Params) -> Result<Vec<Score>> {
        // Nobody follows the progress here.
        let (tx, _rx) = std::sync::mpsc::channel();
        self.alone_reporting(qs, plan, params, &tx)
    }

    /// [`Probe::alone`], sending `scored` a message as each score is done.
    fn alone_reporting(
        &self,
        qs: &[Quantizer],
        plan: &Plan,
        params: &Params,
        scored: &Sender<()>,
    ) -> Result<Vec<Score>> {
        let none = subset(params, plan, |_| false);
        self.forked_scores(qs, &none, &|q| subset(params, plan, |o| o == q), scored)
    }

    /// The scores of the models simulated with `suffix(q)` for each quantizer of `qs`, where
    /// every node before the first that q acts on computes what the model simulated with
    /// `prefix` computes ([`fork_points`]): each sample's run with `prefix` is paused there, and
    /// only the rest of the graph runs with q's parameters. The same values as whole runs, in
    /// about half their time.
    fn forked_scores(
        &self,
        qs: &[Quantizer],
        prefix: &Params,
        suffix: &(dyn Fn(&Quantizer) -> Params + Sync),
        scored: &Sender<()>,
    ) -> Result<Vec<Score>> {
        let forks = fork_points(self.graph, qs);
        let mut order: Vec<usize> = (0..qs.len()).collect();
        order.sort_by_key(|&i| forks[i].map_or(0, |f| f + 1));
        let before = Simulation::new(self.graph, prefix)?;
        let mut paused: Vec<Paused> = (self.batches.par_iter())
            .map(|b| before.start(b.clone()))
            .collect::<Result<_>>()?;
        let mut scores = vec![None; qs.len()];
        for i in order {
            let params = suffix(&qs[i]);
            let changed = changed_initializers(prefix, &params);
            let sim = Simulation::varying(&before, self.graph, &params, &changed)?;
            let outputs: Vec<Vec<(String, Value)>> = match forks[i] {
                None => (self.batches.par_iter())
                    .map(|b| sim.run(b.clone(), &mut |_, _| {}))
                    .collect::<Result<_>>()?,
                Some(fork) => {
                    paused = (paused.into_par_iter())
                        .map(|p| before.resume(p, fork))
                        .collect::<Result<_>>()?;
                    (paused.par_iter())
                        .map(|p| sim.finish(sim.resume(p.clone(), usize::MAX)?))
                        .collect::<Result<_>>()?
                }
            };
            let mut tally = Tally::default();
            for (float, out) in self.float.iter().zip(&outputs) {
                tally.add(float, out)?;
            }
            scores[i] = Some(tally.score());
            // The receiver only shows progress: one gone away is no reason to stop.
            let _ = scored.send(());
        }
        Ok(scores.into_iter().flatten().collect())
    }
}

/// The weights and biases quantized in one of `a` and `b` and not in the other, or with other
/// parameters: the initializers a simulation of `b` cannot take from one of `a`.
fn changed_initializers<'p>(a: &'p Params, b: &'p Params) -> HashSet<&'p str> {
    let mut changed = HashSet::new();
    for (x, y) in [(a, b), (b, a)] {
        let weights = x.weights.iter().filter(|w| y.weight(&w.name) != Some(w));
        changed.extend(weights.map(|w| w.name.as_str()));
        let biases = x.biases.iter().filter(|p| y.bias(&p.name) != Some(p));
        changed.extend(biases.map(|p| p.name.as_str()));
    }
    changed
}

/// A simulated model's errors against the float model's outputs, sample after sample.
#[derive(Default)]
struct Tally {
    errors: Vec<Running>,
    agree: usize,
    rows: usize,
}

impl Tally {
    fn add(&mut self, float: &Outputs, out: &[(String, Value)]) -> Result<()> {
        let pairs: Vec<(&Value, &Value)> = float
            .iter()
            .zip(out)
            .filter(|((_, f), _)| f.dtype.is_float())
            .map(|((_, f), (_, q))| (f, q))
            .collect();
        self.errors.resize(pairs.len(), Running::default());
        for (acc, (f, q)) in self.errors.iter_mut().zip(&pairs) {
            f.with_f32s(|r| q.with_f32s(|x| acc.add(r, x)))??;
        }
        if let Some((f, q)) = pairs.first() {
            let (a, n) = top1_agreement(f, q)?;
            self.agree += a;
            self.rows += n;
        }
        Ok(())
    }

    fn score(&self) -> Score {
        let errors = &self.errors;
        let sqnr =
            errors.iter().map(|e| e.stats().sqnr_db).sum::<f64>() / errors.len().max(1) as f64;
        Score {
            sqnr_db: sqnr,
            agreement: (self.rows > 0).then(|| self.agree as f64 / self.rows as f64),
        }
    }
}

/// The node of the main graph at which each quantizer of `qs` starts to act: the one that
/// produces its activation or first reads its weight (the node holding it, for one inside a
/// subgraph). None for a graph input's activation, which acts before any node, and for a
/// quantizer the graph does not show.
fn fork_points(graph: &Graph, qs: &[Quantizer]) -> Vec<Option<usize>> {
    let mut produced: HashMap<&str, usize> = HashMap::new();
    let mut read: HashMap<&str, usize> = HashMap::new();
    for (i, node) in graph.nodes.iter().enumerate() {
        let nested = node.subgraphs.iter().flat_map(|(_, g)| g.all_nodes());
        for n in std::iter::once(node).chain(nested) {
            n.outputs
                .iter()
                .for_each(|o| _ = produced.entry(o).or_insert(i));
            n.inputs.iter().for_each(|x| _ = read.entry(x).or_insert(i));
        }
    }
    (qs.iter())
        .map(|q| match q {
            Quantizer::Activation(a) => produced.get(a.as_str()).copied(),
            Quantizer::Weight(w) => read.get(w.as_str()).copied(),
        })
        .collect()
}

/// Rows of `f` and `q` (along the last axis) whose argmax is the same, and the number of rows;
/// no rows when the last axis is a single score.
fn top1_agreement(f: &Value, q: &Value) -> Result<(usize, usize)> {
    let width = f.shape().last().copied().unwrap_or(1);
    if width < 2 || f.shape() != q.shape() {
        return Ok((0, 0));
    }
    let argmax = |row: &[f32]| top(row, 1)[0];
    let counted = f.with_f32s(|r| {
        q.with_f32s(|x| {
            let same = r
                .chunks(width)
                .zip(x.chunks(width))
                .filter(|(a, b)| argmax(a) == argmax(b))
                .count();
            (same, r.len() / width)
        })
    })??;
    Ok(counted)
}

/// Every quantizer of `params`: weights, then activations with their own grid, in plan order.
pub fn quantizers(params: &Params) -> Vec<Quantizer> {
    let weights = params
        .weights
        .iter()
        .map(|w| Quantizer::Weight(w.name.clone()));
    let activations = params
        .activations
        .iter()
        .filter(|a| a.shares.is_none())
        .map(|a| Quantizer::Activation(a.value.clone()));
    weights.chain(activations).collect()
}

/// `params` with only the quantizers `keep` accepts; a bias stays quantized only where both
/// its weight and its layer's input do (its scale is their product).
pub fn subset(params: &Params, plan: &Plan, keep: impl Fn(&Quantizer) -> bool) -> Params {
    let weights: Vec<_> = params
        .weights
        .iter()
        .filter(|w| keep(&Quantizer::Weight(w.name.clone())))
        .cloned()
        .collect();
    let activations: Vec<_> = params
        .activations
        .iter()
        .filter(|a| keep(&Quantizer::Activation(a.grid_owner().to_string())))
        .cloned()
        .collect();
    let kept = Params {
        weights,
        activations,
        biases: Vec::new(),
    };
    let biases = params
        .biases
        .iter()
        .filter(|b| {
            plan.biases.iter().any(|site| {
                site.name == b.name
                    && kept.weight(&site.weight).is_some()
                    && kept.activation(&site.input).is_some()
            })
        })
        .cloned()
        .collect();
    Params { biases, ..kept }
}

/// One quantizer's measured cost.
#[derive(Debug, Clone, Serialize)]
pub struct Sensitivity {
    pub quantizer: Quantizer,
    /// The layer that reads the weight, or the node that produces the activation ("" for a
    /// graph input).
    pub node: String,
    pub op: String,
    /// The model with only this quantizer.
    pub alone: Score,
    /// The model with every quantizer but this one.
    pub all_but: Score,
}

/// Where each quantizer sits: the layer reading a weight, the node producing an activation
/// (subgraphs included), each with its operator.
pub struct Sites<'g> {
    producers: HashMap<&'g str, (&'g str, &'g str)>,
    readers: HashMap<&'g str, (&'g str, &'g str)>,
}

impl<'g> Sites<'g> {
    pub fn new(graph: &'g Graph, plan: &'g Plan) -> Sites<'g> {
        let producers = graph
            .all_nodes()
            .into_iter()
            .flat_map(|n| {
                n.outputs
                    .iter()
                    .map(move |o| (o.as_str(), (n.name.as_str(), n.op.as_str())))
            })
            .collect();
        let readers = plan
            .weights
            .iter()
            .map(|w| (w.name.as_str(), (w.node.as_str(), w.op.as_str())))
            .collect();
        Sites { producers, readers }
    }

    /// The node and operator of `q` ("" for a graph input).
    pub fn of(&self, q: &Quantizer) -> (&'g str, &'g str) {
        let at = match q {
            Quantizer::Weight(w) => self.readers.get(w.as_str()),
            Quantizer::Activation(a) => self.producers.get(a.as_str()),
        };
        at.copied().unwrap_or(("", ""))
    }
}

/// The sensitivity of every quantizer of `params`, most harmful first: by the SQNR of the
/// model with only that quantizer, lowest first. With only q, the nodes before q's first
/// compute the float model's values, and with all but q the fully quantized model's: those runs
/// are shared ([`Probe::forked_scores`]). The two kinds run one after the other, so that the
/// paused runs of one are held at a time (both at once held 596 MB instead of 482 on
/// ppocr-v3-det), the samples in parallel, on worker threads while this one reports
/// `progress(scores done, scores in all)`.
pub fn sensitivities(
    probe: &Probe,
    plan: &Plan,
    params: &Params,
    progress: &mut dyn FnMut(usize, usize),
) -> Result<Vec<Sensitivity>> {
    let sites = Sites::new(probe.graph(), plan);
    let qs = quantizers(params);
    let total = 2 * qs.len();
    let (tx, rx) = std::sync::mpsc::channel();
    let (alone, all_but) = std::thread::scope(|scope| {
        let qs = &qs;
        let worker = scope.spawn(move || {
            // One kind after the other, the samples in parallel: the paused runs of one kind
            // are held at a time. The sender goes with the thread.
            let tx = tx;
            let alone = probe.alone_reporting(qs, plan, params, &tx);
            let all_but =
                probe.forked_scores(qs, params, &|q| subset(params, plan, |o| o != q), &tx);
            (alone, all_but)
        });
        progress(0, total);
        // Ends when the worker is done (or failed): its sender is gone then.
        for done in 1..=total {
            if rx.recv().is_err() {
                break;
            }
            progress(done, total);
        }
        worker
            .join()
            .unwrap_or_else(|e| std::panic::resume_unwind(e))
    });
    let scores = alone?.into_iter().zip(all_but?);
    let mut out: Vec<Sensitivity> = (qs.into_iter().zip(scores))
        .map(|(q, (alone, all_but))| {
            let (node, op) = sites.of(&q);
            Sensitivity {
                node: node.to_string(),
                op: op.to_string(),
                quantizer: q,
                alone,
                all_but,
            }
        })
        .collect();
    out.sort_by(|a, b| a.alone.sqnr_db.total_cmp(&b.alone.sqnr_db));
    Ok(out)
}
