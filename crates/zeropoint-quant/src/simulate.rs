//! The simulated quantized model: the float graph run with every planned weight and bias
//! replaced by its dequantized value and every planned activation fake-quantized as it is
//! produced, which is what the exported QDQ model computes.

use std::collections::{HashMap, HashSet};

use zeropoint_core::{fake_quant, QParams};
use zeropoint_engine::exec::{Hook, HookError, Paused, Stepped};
use zeropoint_engine::{Executor, Value};
use zeropoint_graph::Graph;
use zeropoint_onnx::RawTensor;

use crate::error::Result;
use crate::params::Params;

/// The quantized model, simulated in zeropoint's executor.
pub struct Simulation<'g> {
    exec: Executor<'g>,
    activations: HashMap<&'g str, &'g QParams>,
}

impl<'g> Simulation<'g> {
    /// The simulation of `graph` (the canonicalized float graph the plan was made for) with
    /// `params`.
    pub fn new(graph: &'g Graph, params: &'g Params) -> Result<Simulation<'g>> {
        Simulation::sharing(graph, params, &[])
    }

    /// [`Simulation::new`], taking the initializers that stay float from `float` (a float
    /// executor's values of the same graph) instead of converting them again: a model whose
    /// weights are mostly not quantized (recurrent ones) holds them once.
    pub fn sharing(
        graph: &'g Graph,
        params: &'g Params,
        float: &[(String, Value)],
    ) -> Result<Simulation<'g>> {
        let quantized = |n: &str| params.weight(n).is_some() || params.bias(n).is_some();
        Simulation::reusing(graph, params, float, &|n| !quantized(n))
    }

    /// [`Simulation::new`] for `params` that differ from `base`'s only at the initializers in
    /// `changed`: the others are `base`'s values, not converted again (the sensitivity analysis
    /// simulates one subset of quantizers after another, each one quantizer away from its base).
    pub fn varying(
        base: &Simulation<'g>,
        graph: &'g Graph,
        params: &'g Params,
        changed: &HashSet<&str>,
    ) -> Result<Simulation<'g>> {
        let values = base.exec.initializer_values();
        Simulation::reusing(graph, params, values, &|n| !changed.contains(n))
    }

    /// The simulation of `graph` with `params`, taking from `values` each initializer that
    /// `reuse` accepts instead of converting it again.
    fn reusing(
        graph: &'g Graph,
        params: &'g Params,
        values: &[(String, Value)],
        reuse: &dyn Fn(&str) -> bool,
    ) -> Result<Simulation<'g>> {
        let values: HashMap<&str, &Value> = values.iter().map(|(n, v)| (n.as_str(), v)).collect();
        let exec = Executor::with_initializers(graph, |t| match values.get(t.name.as_str()) {
            Some(v) if reuse(&t.name) => Ok((*v).clone()),
            _ => quantized_initializer(t, params),
        })?;
        let activations = params
            .activations
            .iter()
            .map(|a| (a.value.as_str(), &a.qparams))
            .collect();
        Ok(Simulation { exec, activations })
    }

    /// Runs a batch; `each` sees every value after quantization.
    pub fn run(
        &self,
        batch: HashMap<String, Value>,
        each: &mut dyn FnMut(&str, &Value),
    ) -> Result<Vec<(String, Value)>> {
        self.run_with(batch, &mut |name, v| {
            each(name, &v);
            Ok(v)
        })
    }

    /// Runs a batch; `hook` gets every value after quantization and returns the value to go on
    /// with (to compare layer by layer with another runtime, feed its values back).
    pub fn run_with(
        &self,
        batch: HashMap<String, Value>,
        hook: &mut Hook,
    ) -> Result<Vec<(String, Value)>> {
        Ok(self
            .exec
            .run_with(batch, &mut |name, v| hook(name, self.quantize(name, v)?))?)
    }

    /// Runs a batch; `hook` gets every value before its own quantizer (as the layer computed it
    /// from quantized inputs and weights) and returns the value to quantize and go on with.
    pub fn run_before_quant(
        &self,
        batch: HashMap<String, Value>,
        hook: &mut Hook,
    ) -> Result<Vec<(String, Value)>> {
        Ok(self
            .exec
            .run_with(batch, &mut |name, v| self.quantize(name, hook(name, v)?))?)
    }

    /// Starts a run on `batch` that [`Simulation::step`] takes on node by node; `hook` gets the
    /// inputs after quantization, as [`Simulation::run_with`] does.
    pub fn begin(&self, batch: HashMap<String, Value>, hook: &mut Hook) -> Result<Stepped> {
        Ok(self
            .exec
            .begin(batch, &mut |name, v| hook(name, self.quantize(name, v)?))?)
    }

    /// Runs the next node of `run`; `hook` gets its outputs after quantization. False at the
    /// graph's end.
    pub fn step(&self, run: &mut Stepped, hook: &mut Hook) -> Result<bool> {
        Ok(self
            .exec
            .step(run, &mut |name, v| hook(name, self.quantize(name, v)?))?)
    }

    /// Starts a run on `batch` that [`Simulation::resume`] runs on in steps.
    pub fn start(&self, batch: HashMap<String, Value>) -> Result<Paused> {
        Ok(self
            .exec
            .start(batch, &mut |name, v| self.quantize(name, v))?)
    }

    /// Runs `paused` on up to node `until` (not included), as [`Simulation::run_before_quant`]
    /// with a hook that changes nothing.
    pub fn resume(&self, paused: Paused, until: usize) -> Result<Paused> {
        Ok(self
            .exec
            .resume(paused, until, &mut |name, v| self.quantize(name, v))?)
    }

    /// The graph's outputs of `paused`, run to the graph's end.
    pub fn finish(&self, paused: Paused) -> Result<Vec<(String, Value)>> {
        Ok(self.exec.finish_paused(paused)?)
    }

    /// The outputs of the node `paused` goes on with, before their quantizers, without running
    /// it.
    pub fn next_outputs(&self, paused: &Paused) -> Result<Vec<Value>> {
        Ok(self.exec.next_outputs(paused)?)
    }

    /// The value the simulation gives initializer `name` (a weight fake-quantized, a bias
    /// from its int32 codes).
    pub fn initializer(&self, name: &str) -> Option<&Value> {
        let values = self.exec.initializer_values();
        values.iter().find(|(n, _)| n == name).map(|(_, v)| v)
    }

    /// Runs from now on with `w` (on its grid, not quantized again) as the weight of its name.
    pub fn set_weight(&mut self, w: &RawTensor) -> Result<()> {
        let v = Value::from_raw(w)?;
        if self.exec.set_initializer(&w.name, v) {
            return Ok(());
        }
        Err(crate::error::Error::Environment(format!(
            "the simulation has no weight '{}' to replace",
            w.name
        )))
    }

    /// `v` through the quantizer of activation `name`, if it has one.
    fn quantize(&self, name: &str, v: Value) -> std::result::Result<Value, HookError> {
        match self.activations.get(name) {
            Some(qp) => fake_quant_value(&v, qp),
            None => Ok(v),
        }
    }
}

/// An initializer as the exported model's DequantizeLinear gives it: a planned weight
/// fake-quantized, a planned bias from its int32 codes, anything else as it is.
fn quantized_initializer(t: &RawTensor, p: &Params) -> std::result::Result<Value, HookError> {
    if let Some(w) = p.weight(&t.name) {
        let y = fake_quant(&t.to_f32s(), &t.shape, &w.qparams)?;
        return Ok(Value::from_f32_vec(y, &t.shape)?);
    }
    if let Some(b) = p.bias(&t.name) {
        return Ok(Value::from_f32_vec(b.dequantized(), &t.shape)?);
    }
    Ok(Value::from_raw(t)?)
}

/// Fake-quantizes `v` (float32) with `qp`.
pub fn fake_quant_value(v: &Value, qp: &QParams) -> std::result::Result<Value, HookError> {
    let y = v.with_f32s(|x| fake_quant(x, v.shape(), qp))??;
    Ok(Value::from_f32_vec(y, v.shape())?)
}
