//! The executor: runs a [`Graph`] node by node on candle tensors.
//!
//! Every value the graph produces (and every fed input) passes through a hook that may observe
//! it or replace it: calibration observes activations, quantization simulation replaces them by
//! their fake-quantized version. Values are dropped after their last use, so memory follows the
//! widest cut of the graph, not its size. Feeding a value under an initializer's name replaces
//! the initializer (a candle `Var` there makes the run differentiable in that weight).

use std::borrow::Cow;
use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use zeropoint_graph::graph::dims_fit;
use zeropoint_graph::{Graph, Node};
use zeropoint_onnx::RawTensor;

mod control_flow;

use crate::error::{Error, Result};
use crate::ops::{self, Cx};
use crate::value::Value;

/// What a hook may fail with: any error, which the executor places at the value it was given.
pub type HookError = Box<dyn std::error::Error + Send + Sync>;

/// A hook: gets each value by name, returns the value to continue with.
pub type Hook<'a> = dyn FnMut(&str, Value) -> std::result::Result<Value, HookError> + 'a;

/// A node hook: gets each node of the main graph with its inputs before it runs, and returns
/// its outputs instead of running it, or None to let it run. A trainer fuses a chain of nodes
/// into one op with its own backward pass this way, the graph unchanged.
pub type NodeHook<'a> =
    dyn FnMut(&Node, &[Option<Value>]) -> Option<std::result::Result<Vec<Value>, HookError>> + 'a;

/// Runs a checked graph.
pub struct Executor<'g> {
    /// The graph, borrowed, or owned without its initializers ([`Executor::owning`]).
    graph: Cow<'g, Graph>,
    /// The initializers as values (the subgraphs' too), converted once.
    scope: Arc<Scope>,
    /// Per node, the values no later node (nor the graph's outputs) reads.
    dead_after: Vec<Vec<String>>,
    /// Per node, whether it is a Sigmoid that the next node multiplies with the Sigmoid's input
    /// (a SiLU), run as one pass ([`Executor::run_silu`]) until a hook changes the Sigmoid's
    /// output (the simulation's quantizer), which the product must then read.
    silu: Vec<AtomicBool>,
}

/// A run stopped before node `next`: the values computed or fed so far that a later node or
/// the graph's outputs read (the executor's own initializers aside).
#[derive(Clone)]
pub struct Paused {
    pub next: usize,
    pub values: HashMap<String, Value>,
}

/// A run held in memory, initializers included, that [`Executor::step`] takes on one node at
/// a time: one thread can take two runs of a graph forward side by side (the per-layer report
/// compares each float value with its simulated twin as soon as both exist).
pub struct Stepped {
    next: usize,
    env: HashMap<String, Value>,
}

/// Refuses a graph with operators zeropoint cannot run, naming every such node.
pub fn check_supported(graph: &Graph) -> Result<()> {
    let unsupported = unsupported(graph);
    if unsupported.is_empty() {
        return Ok(());
    }
    Err(model_error(graph, unsupported_message(&unsupported)))
}

/// The domain of classical machine learning (scikit-learn's and XGBoost's converters: scalers,
/// tree ensembles, SVMs, label encoders), which is not a network to quantize.
const ML_DOMAIN: &str = "ai.onnx.ml";

/// "operator(s) unsupported: LABELS", and why where a node is of the ai.onnx.ml domain.
pub fn unsupported_message(labels: &[String]) -> String {
    let what = if labels.len() == 1 {
        "operator"
    } else {
        "operators"
    };
    let mut message = format!("{what} unsupported: {}", labels.join(", "));
    if labels
        .iter()
        .any(|l| l.ends_with(&format!("domain {ML_DOMAIN})")))
    {
        message += &format!(
            "; the {ML_DOMAIN} domain (classical machine learning: scalers, trees, linear \
             models) is out of zeropoint's scope, which quantizes neural networks"
        );
    }
    message
}

/// Whether zeropoint can run `node`: an operator it has, or control flow with its subgraphs.
pub fn supports(node: &Node) -> bool {
    ops::supports(node) || control_flow::supports(node)
}

/// The nodes of `graph` and of its subgraphs that zeropoint cannot run, as "node 'x' (Op)"
/// labels, "node 'x' (Op, domain d)" outside the default domain.
pub fn unsupported(graph: &Graph) -> Vec<String> {
    graph
        .all_nodes()
        .into_iter()
        .filter(|n| !supports(n))
        .map(|n| match n.domain.as_str() {
            "" | "ai.onnx" => n.label(),
            domain => format!("node '{}' ({}, domain {domain})", n.name, n.op),
        })
        .collect()
}

impl<'g> Executor<'g> {
    /// Prepares a graph for running; every unsupported operator is reported at once, by node.
    pub fn new(graph: &'g Graph) -> Result<Executor<'g>> {
        Executor::with_initializers(graph, |t| Ok(Value::from_raw(t)?))
    }

    /// Prepares a graph for running with its initializers turned into values by `value` (the
    /// quantization simulation gives fake-quantized weights this way, without a second graph).
    pub fn with_initializers(
        graph: &'g Graph,
        mut value: impl FnMut(&RawTensor) -> std::result::Result<Value, HookError>,
    ) -> Result<Executor<'g>> {
        check_supported(graph)?;
        let scope = Arc::new(Scope::new(graph, &mut value)?);
        Ok(Executor::in_scope(graph, scope))
    }

    /// An executor of `graph` whose initializers `scope` holds (a subgraph's, prepared with its
    /// enclosing graph's).
    pub(crate) fn in_scope(graph: &'g Graph, scope: Arc<Scope>) -> Executor<'g> {
        let mut last: HashMap<&str, usize> = HashMap::new();
        let reads: Vec<Vec<String>> = graph.nodes.iter().map(Node::reads).collect();
        for (i, names) in reads.iter().enumerate() {
            for name in names {
                last.insert(name, i);
            }
        }
        for o in &graph.outputs {
            last.remove(o.name.as_str());
        }
        let mut dead_after = vec![Vec::new(); graph.nodes.len()];
        for (name, i) in last {
            dead_after[i].push(name.to_string());
        }
        Executor {
            graph: Cow::Borrowed(graph),
            scope,
            dead_after,
            silu: silu_pairs(graph),
        }
    }

    /// The graph this executor runs (without its initializers if the executor owns it).
    pub fn graph(&self) -> &Graph {
        &self.graph
    }

    /// The main graph's initializers as this executor holds them (values share their storage
    /// when cloned).
    pub fn initializer_values(&self) -> &[(String, Value)] {
        &self.scope.initializers
    }

    /// Whether `name` is an initializer (which a caller may feed to replace it).
    fn is_initializer(&self, name: &str) -> bool {
        self.scope.initializers.iter().any(|(n, _)| n == name)
    }

    /// Runs the graph on `inputs` (by name); returns the graph's outputs in order.
    pub fn run(&self, inputs: HashMap<String, Value>) -> Result<Vec<(String, Value)>> {
        self.run_with(inputs, &mut |_, v| Ok(v))
    }

    /// Runs the graph, passing each fed input and each node output through `hook`, which returns
    /// the value to continue with.
    pub fn run_with(
        &self,
        inputs: HashMap<String, Value>,
        hook: &mut Hook,
    ) -> Result<Vec<(String, Value)>> {
        self.run_all(inputs, hook, None)
    }

    /// [`Executor::run_with`], and each node of the main graph offered to `nodes` first (see
    /// [`NodeHook`]); the outputs it returns pass through `hook` as a node's would.
    pub fn run_with_nodes(
        &self,
        inputs: HashMap<String, Value>,
        hook: &mut Hook,
        nodes: &mut NodeHook,
    ) -> Result<Vec<(String, Value)>> {
        self.run_all(inputs, hook, Some(nodes))
    }

    fn run_all(
        &self,
        inputs: HashMap<String, Value>,
        hook: &mut Hook,
        nodes: Option<&mut NodeHook>,
    ) -> Result<Vec<(String, Value)>> {
        let mut run = self.begin(inputs, hook)?;
        let count = self.graph().nodes.len();
        self.run_nodes_with(&mut run.env, run.next..count, hook, nodes)?;
        run.next = count;
        self.finish(run)
    }

    /// Starts a run on `inputs` (checked, and passed through `hook`, as [`Executor::run_with`]
    /// does) without running any node: [`Executor::resume`] runs it on in steps. A caller that
    /// must see a whole dataset at one node before any sample goes past it (AdaRound) pauses
    /// every sample's run there.
    pub fn start(&self, inputs: HashMap<String, Value>, hook: &mut Hook) -> Result<Paused> {
        self.check_inputs(&inputs)?;
        let g = self.graph();
        let mut values = HashMap::new();
        for (name, v) in inputs {
            let v = hook(&name, v).map_err(|e| located(g, format!("input '{name}'"), e))?;
            values.insert(name, v);
        }
        Ok(Paused { next: 0, values })
    }

    /// Runs `paused` on up to node `until` (not included; the graph's end at most), passing
    /// each value through `hook` as [`Executor::run_with`] does.
    pub fn resume(&self, paused: Paused, until: usize, hook: &mut Hook) -> Result<Paused> {
        let until = until.clamp(paused.next, self.graph().nodes.len());
        let initializers: HashSet<&str> = self
            .scope
            .initializers
            .iter()
            .map(|(n, _)| n.as_str())
            .collect();
        // A fed initializer (a trained weight) stays with the run; the others stay here.
        let fed: HashSet<String> = paused
            .values
            .keys()
            .filter(|n| initializers.contains(n.as_str()))
            .cloned()
            .collect();
        let mut env: HashMap<String, Value> = self.scope.initializers.iter().cloned().collect();
        env.extend(paused.values);
        self.run_nodes(&mut env, paused.next..until, hook)?;
        env.retain(|n, _| !initializers.contains(n.as_str()) || fed.contains(n));
        Ok(Paused {
            next: until,
            values: env,
        })
    }

    /// The graph's outputs of `paused`, run to the graph's end, in order (an output that is
    /// an initializer from this executor's).
    pub fn finish_paused(&self, paused: Paused) -> Result<Vec<(String, Value)>> {
        let g = self.graph();
        if let Some(node) = g.nodes.get(paused.next) {
            let node = node.label();
            return Err(model_error(g, format!("the run stopped before {node}")));
        }
        let mut env: HashMap<String, Value> = self.scope.initializers.iter().cloned().collect();
        env.extend(paused.values);
        let names = g.outputs.iter().map(|o| o.name.clone());
        Ok(names.zip(self.outputs_in(&env)?).collect())
    }

    /// Replaces the value of initializer `name` in later runs (a weight learned between the
    /// steps of paused runs). False if there is no such initializer, or if a clone of this
    /// executor's initializers is running.
    pub fn set_initializer(&mut self, name: &str, v: Value) -> bool {
        let Some(scope) = Arc::get_mut(&mut self.scope) else {
            return false;
        };
        match scope.initializers.iter_mut().find(|(n, _)| n == name) {
            Some(slot) => {
                slot.1 = v;
                true
            }
            None => false,
        }
    }

    /// Runs the nodes in order, starting from `env` (for a subgraph, the values of enclosing
    /// graphs it reads); `inputs` are the declared inputs, which, like every value computed,
    /// pass through `hook`. Returns the graph's outputs in order.
    pub(crate) fn run_scoped(
        &self,
        env: HashMap<String, Value>,
        inputs: HashMap<String, Value>,
        hook: &mut Hook,
    ) -> Result<Vec<Value>> {
        let mut env = self.scoped_env(env, inputs, hook)?;
        self.run_nodes(&mut env, 0..self.graph().nodes.len(), hook)?;
        self.outputs_in(&env)
    }

    /// `env` with the initializers and `inputs` (through `hook`) added: what the first node
    /// runs on.
    fn scoped_env(
        &self,
        mut env: HashMap<String, Value>,
        inputs: HashMap<String, Value>,
        hook: &mut Hook,
    ) -> Result<HashMap<String, Value>> {
        let g = self.graph();
        env.extend(self.scope.initializers.iter().cloned());
        for (name, v) in inputs {
            let v = hook(&name, v).map_err(|e| located(g, format!("input '{name}'"), e))?;
            env.insert(name, v);
        }
        Ok(env)
    }

    /// Starts a run on `inputs` (checked, and passed through `hook`, as [`Executor::run_with`]
    /// does) that [`Executor::step`] takes on node by node.
    pub fn begin(&self, inputs: HashMap<String, Value>, hook: &mut Hook) -> Result<Stepped> {
        self.check_inputs(&inputs)?;
        let env = self.scoped_env(HashMap::new(), inputs, hook)?;
        Ok(Stepped { next: 0, env })
    }

    /// Runs the next node of `run`, passing its outputs through `hook`; false (and nothing
    /// run) at the graph's end.
    pub fn step(&self, run: &mut Stepped, hook: &mut Hook) -> Result<bool> {
        let i = run.next;
        if i >= self.graph().nodes.len() {
            return Ok(false);
        }
        self.run_nodes(&mut run.env, i..i + 1, hook)?;
        run.next += 1;
        Ok(true)
    }

    /// The graph's outputs of a run stepped to its end, in order.
    pub fn finish(&self, run: Stepped) -> Result<Vec<(String, Value)>> {
        let g = self.graph();
        if let Some(node) = g.nodes.get(run.next) {
            let node = node.label();
            return Err(model_error(g, format!("the run stopped before {node}")));
        }
        let names = g.outputs.iter().map(|o| o.name.clone());
        Ok(names.zip(self.outputs_in(&run.env)?).collect())
    }

    /// The graph's outputs among the values of a finished run, in order.
    fn outputs_in(&self, env: &HashMap<String, Value>) -> Result<Vec<Value>> {
        let g = self.graph();
        g.outputs
            .iter()
            .map(|o| {
                env.get(&o.name)
                    .cloned()
                    .ok_or_else(|| model_error(g, format!("output '{}' was not computed", o.name)))
            })
            .collect()
    }

    /// Runs nodes `nodes` (indices, in order) on the values in `env`, which gains their outputs
    /// (through `hook`) and loses each value after its last reader.
    fn run_nodes(
        &self,
        env: &mut HashMap<String, Value>,
        nodes: std::ops::Range<usize>,
        hook: &mut Hook,
    ) -> Result<()> {
        self.run_nodes_with(env, nodes, hook, None)
    }

    /// [`Executor::run_nodes`] with each node offered to `over` first, if given.
    fn run_nodes_with(
        &self,
        env: &mut HashMap<String, Value>,
        nodes: std::ops::Range<usize>,
        hook: &mut Hook,
        mut over: Option<&mut NodeHook>,
    ) -> Result<()> {
        let g = self.graph();
        let mut i = nodes.start;
        while i < nodes.end {
            let node = &g.nodes[i];
            if over.is_none() && i + 1 < nodes.end {
                let done = self.run_silu(i, env, hook)?;
                if done > 0 {
                    i += done;
                    continue;
                }
            }
            let replaced = over.as_mut().and_then(|f| f(node, &node_args(node, env)));
            let outs = match replaced {
                Some(outs) => outs.map_err(|e| located(g, node.label(), e))?,
                None => self.run_node(i, env, hook)?,
            };
            for (name, v) in node.outputs.iter().zip(outs) {
                if !name.is_empty() {
                    self.keep(node, name, v, env, hook)?;
                }
            }
            self.forget_dead(i, env);
            i += 1;
        }
        Ok(())
    }

    /// Output `name` of `node`, `v`, through `hook` into `env`.
    fn keep(
        &self,
        node: &Node,
        name: &str,
        v: Value,
        env: &mut HashMap<String, Value>,
        hook: &mut Hook,
    ) -> Result<()> {
        let v = hook(name, v).map_err(|e| {
            located(
                self.graph(),
                format!("{}: output '{name}'", node.label()),
                e,
            )
        })?;
        env.insert(name.to_string(), v);
        Ok(())
    }

    /// Drops from `env` the values no node after node `i` reads.
    fn forget_dead(&self, i: usize, env: &mut HashMap<String, Value>) {
        for dead in &self.dead_after[i] {
            env.remove(dead);
        }
    }

    /// Node `i` and the next one as one pass where they are a SiLU ([`Executor::silu`]) on
    /// float32 data: both outputs pass through `hook` and go into `env` as the two nodes'
    /// would. Returns how many nodes it ran: 0 (no SiLU here), 2, or 1 where the hook changed
    /// the Sigmoid's output; the pair is then not fused again.
    fn run_silu(
        &self,
        i: usize,
        env: &mut HashMap<String, Value>,
        hook: &mut Hook,
    ) -> Result<usize> {
        if !self.silu[i].load(Ordering::Relaxed) {
            return Ok(0);
        }
        let g = self.graph();
        let (sigmoid, mul) = (&g.nodes[i], &g.nodes[i + 1]);
        let Some(x) = env.get(&sigmoid.inputs[0]) else {
            return Ok(0);
        };
        if x.dtype != zeropoint_onnx::DType::F32 || x.tensor.track_op() {
            return Ok(0);
        }
        let dims = x.tensor.dims().to_vec();
        let (s, y) = crate::value::with_f32_slice(&x.tensor, ops::sigmoid_and_product)
            .map_err(|e| located(g, sigmoid.label(), e))?;
        let value = |v| Value::from_f32_vec(v, &dims).map_err(|e| located(g, sigmoid.label(), e));
        let (s, y) = (value(s)?, value(y)?);
        let (name, id) = (&sigmoid.outputs[0], s.tensor.id());
        self.keep(sigmoid, name, s, env, hook)?;
        // The hook's value, read before node i's dead values go (the Mul reads it: it stays).
        let changed = env.get(name).is_none_or(|v| v.tensor.id() != id);
        self.forget_dead(i, env);
        if changed {
            self.silu[i].store(false, Ordering::Relaxed);
            return Ok(1);
        }
        self.keep(mul, &mul.outputs[0], y, env, hook)?;
        self.forget_dead(i + 1, env);
        Ok(2)
    }

    /// Node `i`'s outputs on the values in `env` (a control-flow node's subgraphs pass theirs
    /// through `hook`).
    fn run_node(
        &self,
        i: usize,
        env: &HashMap<String, Value>,
        hook: &mut Hook,
    ) -> Result<Vec<Value>> {
        let g = self.graph();
        let node = &g.nodes[i];
        let args = node_args(node, env);
        let outs = if node.subgraphs.is_empty() {
            let cx = Cx {
                node,
                inputs: &args,
                opset: g.opset,
            };
            ops::run(&cx)
        } else {
            control_flow::run(node, self.scope.nested(i), &args, env, hook)
        };
        outs.map_err(|e| located(g, node.label(), e))
    }

    /// What the node `paused` goes on with computes from its values, without running it:
    /// its outputs as they are before any hook (bias correction measures a layer's output
    /// this way before deciding what the run goes on with).
    pub fn next_outputs(&self, paused: &Paused) -> Result<Vec<Value>> {
        if paused.next >= self.graph().nodes.len() {
            return Err(model_error(
                self.graph(),
                "a run at the graph's end has no next node".into(),
            ));
        }
        let mut env: HashMap<String, Value> = self.scope.initializers.iter().cloned().collect();
        env.extend(paused.values.iter().map(|(n, v)| (n.clone(), v.clone())));
        self.run_node(paused.next, &env, &mut |_, v| Ok(v))
    }

    /// Every declared input is fed, with its declared element type and fixed dimensions; nothing
    /// else is fed but initializers.
    fn check_inputs(&self, inputs: &HashMap<String, Value>) -> Result<()> {
        let g = self.graph();
        for name in inputs.keys() {
            if !g.inputs.iter().any(|i| &i.name == name) && !self.is_initializer(name) {
                let names: Vec<&str> = g.inputs.iter().map(|i| i.name.as_str()).collect();
                return Err(model_error(
                    g,
                    format!(
                        "the model has no input '{name}' (its inputs: {})",
                        names.join(", ")
                    ),
                ));
            }
        }
        for info in &g.inputs {
            let v = inputs
                .get(&info.name)
                .ok_or_else(|| model_error(g, format!("input '{}' is not given", info.name)))?;
            if let Some(d) = info.dtype.filter(|&d| d != v.dtype) {
                return Err(model_error(
                    g,
                    format!("input '{}' must be {d}, got {}", info.name, v.dtype),
                ));
            }
            if let Some(s) = info.shape.as_ref().filter(|s| !dims_fit(s, v.shape())) {
                // Stacked samples for a model that takes one: the rest of the shape fits.
                let one_at_a_time = matches!(s.first(), Some(zeropoint_graph::Dim::Fixed(1)))
                    && v.shape().len() == s.len()
                    && v.shape()[0] > 1
                    && dims_fit(&s[1..], &v.shape()[1..]);
                let why = if one_at_a_time {
                    format!(
                        ": the model's batch is fixed at 1, and the data stacks {} samples; give them one at a time",
                        v.shape()[0]
                    )
                } else {
                    String::new()
                };
                return Err(model_error(
                    g,
                    format!(
                        "input '{}' must have shape {}, got {:?}{why}",
                        info.name,
                        info.shape_text(),
                        v.shape()
                    ),
                ));
            }
        }
        Ok(())
    }
}

/// `run(graph, exec)` with an executor that takes `graph`'s initializers instead of a copy of
/// them, and gives them back after, whatever `run` returned: a 0.5B decoder's 2.5 GB of weights
/// were held twice by every pass that ran it (shape inference, calibration). Float32
/// initializers come back as the executor holds them at the end: with the same bits, unless
/// `run` replaced them ([`Executor::set_initializer`]); the others, small, from a copy kept
/// meanwhile. `run` reads the graph, without its initializers, beside the executor. If the
/// executor cannot be made, the graph is left as it was.
pub fn with_weights_taken<R>(
    graph: &mut Graph,
    run: impl FnOnce(&Graph, &mut Executor) -> R,
) -> Result<R> {
    check_supported(graph)?;
    let others: HashMap<String, RawTensor> = (graph.initializers.iter())
        .filter(|t| t.dtype != zeropoint_onnx::DType::F32)
        .map(|t| (t.name.clone(), t.clone()))
        .collect();
    let mut values = Vec::with_capacity(graph.initializers.len());
    let mut raw = std::mem::take(&mut graph.initializers).into_iter();
    let mut failed = None;
    for t in raw.by_ref() {
        match Value::from_raw(&t) {
            // Each raw copy is dropped as soon as its value is made.
            Ok(v) => values.push((t.name, v)),
            Err(e) => {
                failed = Some((located(graph, format!("initializer '{}'", t.name), e), t));
                break;
            }
        }
    }
    if let Some((e, t)) = failed {
        give_back(graph, values, &others)?;
        graph.initializers.push(t);
        graph.initializers.extend(raw);
        return Err(e);
    }
    // The subgraphs' initializers are in their nodes, made into values as usual.
    let mut scope = match Scope::new(graph, &mut |t| Ok(Value::from_raw(t)?)) {
        Ok(scope) => scope,
        Err(e) => {
            give_back(graph, values, &others)?;
            return Err(e);
        }
    };
    scope.initializers = values;
    let mut exec = Executor::in_scope(graph, Arc::new(scope));
    let result = run(graph, &mut exec);
    // Subgraph executors share the scope only while they run.
    let values = Arc::try_unwrap(exec.scope)
        .map_err(|_| model_error(graph, "the executor's values are still in use".into()))?
        .initializers;
    give_back(graph, values, &others)?;
    Ok(result)
}

/// The initializers' values back into `graph` in their order, each value dropped once copied.
fn give_back(
    graph: &mut Graph,
    values: Vec<(String, Value)>,
    others: &HashMap<String, RawTensor>,
) -> Result<()> {
    graph.initializers.reserve(values.len());
    for (name, v) in values {
        let t = match others.get(&name) {
            Some(t) => t.clone(),
            None => v.to_raw(&name)?,
        };
        graph.initializers.push(t);
    }
    Ok(())
}

impl Executor<'static> {
    /// An executor that owns `graph`: its initializers are kept as values only, each raw copy
    /// dropped as soon as its value is made, so that a model's weights are held once (plus the
    /// largest while it is converted). For a caller that needs the graph only to run it, such
    /// as `zeropoint run` and `eval`, or that takes it back with [`Executor::into_parts`].
    pub fn owning(mut graph: Graph) -> Result<Executor<'static>> {
        check_supported(&graph)?;
        let mut initializers = Vec::with_capacity(graph.initializers.len());
        for t in std::mem::take(&mut graph.initializers) {
            let v = Value::from_raw(&t)
                .map_err(|e| located(&graph, format!("initializer '{}'", t.name), e))?;
            initializers.push((t.name, v));
        }
        // The subgraphs' initializers are in their nodes, made into values as usual.
        let mut scope = Scope::new(&graph, &mut |t| Ok(Value::from_raw(t)?))?;
        scope.initializers = initializers;
        let dead_after = Executor::in_scope(&graph, Arc::new(Scope::default())).dead_after;
        Ok(Executor {
            silu: silu_pairs(&graph),
            graph: Cow::Owned(graph),
            scope: Arc::new(scope),
            dead_after,
        })
    }

    /// The graph (without its initializers) and the initializers' values, by name in the
    /// graph's order, of an executor made by [`Executor::owning`].
    pub fn into_parts(self) -> Result<(Graph, Vec<(String, Value)>)> {
        let graph = self.graph.into_owned();
        let scope = Arc::try_unwrap(self.scope).map_err(|_| {
            model_error(&graph, "the executor's values are still in use".to_string())
        })?;
        Ok((graph, scope.initializers))
    }
}

/// The initializers of a graph as values, and those of its nodes' subgraphs.
#[derive(Default)]
pub(crate) struct Scope {
    initializers: Vec<(String, Value)>,
    /// By node index, then attribute name.
    subgraphs: HashMap<usize, Vec<(String, Arc<Scope>)>>,
}

impl Scope {
    fn new(
        graph: &Graph,
        value: &mut impl FnMut(&RawTensor) -> std::result::Result<Value, HookError>,
    ) -> Result<Scope> {
        let initializers = graph
            .initializers
            .iter()
            .map(|t| {
                let v =
                    value(t).map_err(|e| located(graph, format!("initializer '{}'", t.name), e))?;
                Ok((t.name.clone(), v))
            })
            .collect::<Result<_>>()?;
        let mut subgraphs = HashMap::new();
        for (i, node) in graph.nodes.iter().enumerate() {
            let scopes = node
                .subgraphs
                .iter()
                .map(|(attr, sub)| Ok((attr.clone(), Arc::new(Scope::new(sub, value)?))))
                .collect::<Result<Vec<_>>>()?;
            if !scopes.is_empty() {
                subgraphs.insert(i, scopes);
            }
        }
        Ok(Scope {
            initializers,
            subgraphs,
        })
    }

    /// The scopes of node `i`'s subgraphs, by attribute name.
    pub(crate) fn nested(&self, i: usize) -> &[(String, Arc<Scope>)] {
        self.subgraphs.get(&i).map_or(&[], Vec::as_slice)
    }
}

/// Something wrong with the model or its inputs, said of the model's file.
fn model_error(g: &Graph, message: String) -> Error {
    zeropoint_graph::Error::model(&g.source, message).into()
}

/// Per node of `graph`, whether it is a Sigmoid(x) = s that the next node multiplies with x,
/// Mul(x, s) or Mul(s, x), with nothing else in between.
fn silu_pairs(graph: &Graph) -> Vec<AtomicBool> {
    use zeropoint_graph::Op;
    let n = graph.nodes.len();
    (0..n)
        .map(|i| {
            let (a, b) = (&graph.nodes[i], graph.nodes.get(i + 1));
            let pair = b.is_some_and(|b| {
                let single = |n: &Node| n.subgraphs.is_empty() && n.outputs.len() == 1;
                let (x, s) = (a.inputs.first(), a.outputs.first());
                a.op == Op::Sigmoid
                    && b.op == Op::Mul
                    && single(a)
                    && single(b)
                    && a.inputs.len() == 1
                    && x.zip(s).is_some_and(|(x, s)| {
                        !x.is_empty()
                            && !s.is_empty()
                            && x != s
                            && !b.outputs[0].is_empty()
                            && b.inputs.len() == 2
                            && (b.inputs[..] == [x.clone(), s.clone()]
                                || b.inputs[..] == [s.clone(), x.clone()])
                    })
            });
            AtomicBool::new(pair)
        })
        .collect()
}

/// A lower error at a place (a node, an input, an output) of the model.
fn located(g: &Graph, at: String, e: impl Into<HookError>) -> Error {
    zeropoint_graph::Error::at(&g.source, at, e).into()
}

/// Node `node`'s inputs from `env`: None for an omitted optional input, and for one that is
/// not there (which the op then reports).
fn node_args(node: &Node, env: &HashMap<String, Value>) -> Vec<Option<Value>> {
    node.inputs
        .iter()
        .map(|n| {
            if n.is_empty() {
                None
            } else {
                env.get(n).cloned()
            }
        })
        .collect()
}

/// Runs one node on given inputs, outside any graph (used by constant folding).
pub fn run_node(node: &Node, inputs: &[Option<Value>], opset: i64) -> Result<Vec<Value>> {
    ops::run(&Cx {
        node,
        inputs,
        opset,
    })
}

#[cfg(test)]
mod tests {
    use zeropoint_graph::{Dim, Op, ValueInfo};
    use zeropoint_onnx::DType;

    use super::*;

    /// x → Sigmoid → s; Mul(s, x) → y (a SiLU); Add(y, s) → z: s is read after the pair too.
    fn silu_graph() -> Graph {
        let value = |name: &str| ValueInfo {
            name: name.into(),
            dtype: Some(DType::F32),
            shape: Some(vec![Dim::Fixed(3), Dim::Fixed(7000)]),
        };
        Graph {
            source: "m.onnx".into(),
            opset: 17,
            inputs: vec![value("x")],
            outputs: vec![value("z")],
            initializers: Vec::new(),
            nodes: vec![
                Node::new("sig", Op::Sigmoid, &["x"], &["s"]),
                Node::new("mul", Op::Mul, &["s", "x"], &["y"]),
                Node::new("add", Op::Add, &["y", "s"], &["z"]),
            ],
        }
    }

    fn input() -> HashMap<String, Value> {
        let x: Vec<f32> = (0..21_000).map(|i| (i as f32 * 0.37).sin() * 9.0).collect();
        let x = Value::from_f32_vec(x, &[3, 7000]).unwrap();
        HashMap::from([("x".to_string(), x)])
    }

    /// Each value the hook sees, and the outputs, of a run with the pair fused (`run_with`)
    /// and node by node (`step`, which never fuses).
    fn seen(exec: &Executor, fused: bool, hook: &mut Hook) -> Vec<(String, Vec<f32>)> {
        let mut seen = Vec::new();
        let mut watch = |name: &str, v: Value| {
            let v = hook(name, v)?;
            seen.push((name.to_string(), v.with_f32s(<[f32]>::to_vec).unwrap()));
            Ok(v)
        };
        let out = if fused {
            exec.run_with(input(), &mut watch).unwrap()
        } else {
            let mut run = exec.begin(input(), &mut watch).unwrap();
            while exec.step(&mut run, &mut watch).unwrap() {}
            exec.finish(run).unwrap()
        };
        let out: Vec<_> = (out.into_iter())
            .map(|(n, v)| (format!("out {n}"), v.with_f32s(<[f32]>::to_vec).unwrap()))
            .collect();
        seen.into_iter().chain(out).collect()
    }

    /// The fused Sigmoid → Mul gives the hook and the outputs the bits of the two ops run one
    /// at a time.
    #[test]
    fn a_fused_silu_is_the_two_ops_bit_for_bit() {
        let g = silu_graph();
        let exec = Executor::new(&g).unwrap();
        assert!(exec.silu[0].load(Ordering::Relaxed));
        let same = &mut |_: &str, v: Value| Ok(v);
        let fused = seen(&exec, true, same);
        assert_eq!(fused, seen(&exec, false, same));
        assert_eq!(fused.len(), 5, "x, s, y, z and the output");
        assert!(exec.silu[0].load(Ordering::Relaxed), "still fused");
    }

    /// A hook that replaces the Sigmoid's output (as the simulation's quantizer does) makes
    /// the Mul read the replacement, in that run and the next, which no longer fuses.
    #[test]
    fn a_replaced_sigmoid_is_what_the_product_reads() {
        let g = silu_graph();
        let exec = Executor::new(&g).unwrap();
        let halve = &mut |name: &str, v: Value| {
            if name != "s" {
                return Ok(v);
            }
            let halved: Vec<f32> = v.with_f32s(|s| s.iter().map(|s| s * 0.5).collect())?;
            Ok(Value::from_f32_vec(halved, v.tensor.dims())?)
        };
        let first = seen(&exec, true, halve);
        assert!(!exec.silu[0].load(Ordering::Relaxed));
        assert_eq!(first, seen(&exec, false, halve));
        assert_eq!(first, seen(&exec, true, halve));
        let x = input()["x"].with_f32s(<[f32]>::to_vec).unwrap();
        let (s, y) = (&first[1].1, &first[2].1);
        assert!((s.iter().zip(y).zip(&x)).all(|((s, y), x)| *y == s * x));
    }
}
