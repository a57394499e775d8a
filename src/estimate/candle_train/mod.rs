//! The `candle-eager` training profile: one step of [`super::train_graph`] on candle 0.11
//! (forward, `Tensor::backward`, candle-nn's `AdamW`), replayed on shapes alone.
//!
//! A closed formula cannot follow candle's autograd closely enough, so this module
//! simulates it: every tensor is a node with a shape, a storage and (when it tracks
//! gradients) references to its inputs, exactly as candle's `Tensor_` holds `Arc`s; storages
//! are counted while anything refers to them. The forward pass is the same generic code the
//! runner executes; `backward` transcribes candle-core 0.11.1's `backprop.rs` rule by rule;
//! `adamw_step` transcribes candle-nn 0.11.1's `AdamW::step`. What that reproduces, and what
//! decides the peaks (all seen in the measurements):
//!
//! - Every forward intermediate stays alive until the loss is dropped: the graph holds them.
//! - `backward` stores a gradient for every operand of every op, constants included (the
//!   broadcast mask, the rotary tables, frozen LoRA base weights): those entries are never
//!   consumed and live until the `GradStore` is dropped.
//! - A gradient computed from a tracked tensor (`grad.matmul(&w)`, `grad.mul(&x)`) tracks
//!   too, so the accumulated gradient holds its zero-initialised predecessor and the partial
//!   gradient until its node is processed.
//! - `AdamW::step` computes on the `Var`s themselves: every temporary tracks and is kept by
//!   the next, about 14 tensors the size of the parameter being updated at once.

mod backward;
mod ops;
mod optimizer;
mod sim;

use super::train_graph::{self, Dims, Inputs, Layer, Linear, Params};
use crate::spec::{DType, ModelSpec};
use serde::Serialize;
use sim::{Sim, SimTensor};

/// What a byte in use belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Part {
    /// Parameters (trainable or frozen), in the model dtype.
    Weights,
    /// Token ids, targets, rotary tables and the causal mask of the step.
    Inputs,
    /// Everything the forward pass allocates: the graph keeps it until the loss is dropped.
    Activations,
    /// The gradients of the trainable parameters.
    Gradients,
    /// Everything else `backward` allocates: gradients of intermediates and constants,
    /// zero-initialised accumulators and the partial gradients they keep.
    BackwardBuffers,
    /// AdamW's first and second moments, in the parameters' dtype.
    OptimizerStates,
    /// The temporaries of `AdamW::step` for one parameter.
    OptimizerTemporaries,
}

impl Part {
    pub const ALL: [Part; 7] = [
        Part::Weights,
        Part::Inputs,
        Part::Activations,
        Part::Gradients,
        Part::BackwardBuffers,
        Part::OptimizerStates,
        Part::OptimizerTemporaries,
    ];

    pub const fn as_str(self) -> &'static str {
        match self {
            Part::Weights => "weights",
            Part::Inputs => "inputs",
            Part::Activations => "activations",
            Part::Gradients => "gradients",
            Part::BackwardBuffers => "backward_buffers",
            Part::OptimizerStates => "optimizer_states",
            Part::OptimizerTemporaries => "optimizer_temporaries",
        }
    }
}

/// Bytes in use per [`Part`] at a peak.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Parts(pub [u64; Part::ALL.len()]);

impl Parts {
    pub fn get(&self, p: Part) -> u64 {
        self.0[p as usize]
    }

    pub fn total(&self) -> u64 {
        self.0.iter().sum()
    }

    /// Non-zero parts by name.
    pub fn to_map(&self) -> std::collections::BTreeMap<String, u64> {
        Part::ALL
            .iter()
            .filter(|p| self.get(**p) > 0)
            .map(|p| (p.as_str().to_string(), self.get(*p)))
            .collect()
    }
}

/// The measured phases of a training step, as `bench --mode train` records them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum TrainPhase {
    /// The forward pass and the loss, in steady state (optimizer moments resident).
    Forward,
    /// `loss.backward()`, the forward graph still alive.
    Backward,
    /// `AdamW::step`, the graph dropped, the gradients alive.
    Optimizer,
    /// The first step's optimizer phase, which creates the moments (`AdamW::new`).
    OptimizerFirst,
}

impl TrainPhase {
    pub const ALL: [TrainPhase; 4] = [
        TrainPhase::Forward,
        TrainPhase::Backward,
        TrainPhase::Optimizer,
        TrainPhase::OptimizerFirst,
    ];

    pub const fn as_str(self) -> &'static str {
        match self {
            TrainPhase::Forward => "train_forward",
            TrainPhase::Backward => "train_backward",
            TrainPhase::Optimizer => "train_optimizer",
            TrainPhase::OptimizerFirst => "train_optimizer_first",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|p| p.as_str() == s)
    }
}

/// LoRA as the runner trains it: adapters in the model dtype on the targeted projections.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LoraSetup {
    pub rank: u64,
    pub targets: Vec<super::train::Target>,
}

/// The peaks of one training point: each phase's bytes by part, measured from before the
/// weights were loaded (the weights are included).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TrainPeaks {
    pub forward: Parts,
    pub backward: Parts,
    pub optimizer: Parts,
    pub optimizer_first: Parts,
    /// Parameters trained (all of them, or the adapters').
    pub trainable_params: u64,
}

impl TrainPeaks {
    pub fn phase(&self, p: TrainPhase) -> &Parts {
        match p {
            TrainPhase::Forward => &self.forward,
            TrainPhase::Backward => &self.backward,
            TrainPhase::Optimizer => &self.optimizer,
            TrainPhase::OptimizerFirst => &self.optimizer_first,
        }
    }

    /// The step's peak over its phases.
    pub fn total_bytes(&self) -> u64 {
        TrainPhase::ALL
            .iter()
            .map(|p| self.phase(*p).total())
            .max()
            .unwrap_or(0)
    }
}

// ---------------------------------------------------------------------------------------
// The simulator.

/// Dims of the graph for a spec and a point.
pub fn graph_dims(spec: &ModelSpec, batch: u64, seq: u64) -> Dims {
    Dims {
        batch: batch as usize,
        seq: seq as usize,
        hidden: spec.hidden_size as usize,
        heads: spec.num_heads as usize,
        kv_heads: spec.num_kv_heads as usize,
        head_dim: spec.head_dim as usize,
        eps: spec.rms_norm_eps,
    }
}

/// The model's parameters on the simulator, and those the optimizer updates (every one,
/// or the LoRA adapters).
struct SimModel {
    params: Params<SimTensor>,
    trainable: Vec<SimTensor>,
}

impl SimModel {
    /// Allocate the parameters as `TrainRunner::load` does, in its order.
    fn load(sim: &Sim, spec: &ModelSpec, e: u64, lora: Option<&LoraSetup>) -> Self {
        use super::train::Target;
        let d = graph_dims(spec, 1, 1);
        let (h, inter, vocab) = (
            spec.hidden_size as usize,
            spec.intermediate_size as usize,
            spec.vocab_size as usize,
        );
        let (q_w, kv_w) = (d.heads * d.head_dim, d.kv_heads * d.head_dim);
        let full = lora.is_none();
        let mut trainable: Vec<SimTensor> = Vec::new();
        let param = |shape: &[usize], trainable: &mut Vec<SimTensor>| {
            if full {
                let v = sim.var(shape);
                trainable.push(v.clone());
                v
            } else {
                sim.tensor(shape, e, false)
            }
        };
        let lin = |out: usize, inp: usize, t: Option<Target>, trainable: &mut Vec<SimTensor>| {
            let w = param(&[out, inp], trainable);
            let adapter = match (lora, t) {
                (Some(l), Some(t)) if l.targets.contains(&t) => {
                    let r = l.rank as usize;
                    let a = sim.var(&[r, inp]);
                    let b = sim.var(&[out, r]);
                    trainable.push(a.clone());
                    trainable.push(b.clone());
                    Some((a, b, 2.0))
                }
                _ => None,
            };
            Linear { w, lora: adapter }
        };
        sim.tag(Part::Weights);
        let embed = param(&[vocab, h], &mut trainable);
        let layers: Vec<Layer<SimTensor>> = (0..spec.num_layers)
            .map(|_| Layer {
                input_layernorm: param(&[h], &mut trainable),
                q: lin(q_w, h, Some(Target::Q), &mut trainable),
                k: lin(kv_w, h, Some(Target::K), &mut trainable),
                v: lin(kv_w, h, Some(Target::V), &mut trainable),
                o: lin(h, q_w, Some(Target::O), &mut trainable),
                post_attention_layernorm: param(&[h], &mut trainable),
                gate: lin(inter, h, Some(Target::Gate), &mut trainable),
                up: lin(inter, h, Some(Target::Up), &mut trainable),
                down: lin(h, inter, Some(Target::Down), &mut trainable),
            })
            .collect();
        let norm = param(&[h], &mut trainable);
        let lm_head = if spec.tie_word_embeddings {
            Linear {
                w: embed.clone(),
                lora: None,
            }
        } else {
            lin(vocab, h, None, &mut trainable)
        };
        let params = Params {
            embed,
            layers,
            norm,
            lm_head,
        };
        SimModel { params, trainable }
    }
}

/// The peaks of one simulated training step: forward, backward, optimizer.
struct StepPeaks {
    forward: Parts,
    backward: Parts,
    optimizer: Parts,
}

/// One training step of `batch x context` tokens on the simulator; the optimizer's moments
/// are created on the first (`moments` None).
fn step(
    sim: &Sim,
    model: &SimModel,
    d: &Dims,
    e: u64,
    moments: &mut Option<Vec<(SimTensor, SimTensor)>>,
) -> StepPeaks {
    sim.reset_peak();
    sim.tag(Part::Inputs);
    let n = d.batch * d.seq;
    let inputs = Inputs {
        ids: sim.tensor(&[n], 4, true),
        targets: sim.tensor(&[n, 1], 4, true),
        cos: sim.tensor(&[d.seq, d.head_dim], e, false),
        sin: sim.tensor(&[d.seq, d.head_dim], e, false),
        mask: sim.tensor(&[d.seq, d.seq], e, false),
    };
    sim.tag(Part::Activations);
    let Ok(loss) = train_graph::loss(sim, &model.params, &inputs, d);
    let forward = sim.peak();
    sim.reset_peak();
    sim.tag(Part::BackwardBuffers);
    let mut grads = sim.backward(&loss);
    let backward = sim.peak();
    drop(loss);
    drop(inputs);
    // Only the parameters' gradients are kept for the step.
    let ids: Vec<usize> = model.trainable.iter().map(|t| t.id).collect();
    grads.map.retain(|k, _| ids.contains(k));
    sim.reset_peak();
    let moments = moments.get_or_insert_with(|| {
        sim.tag(Part::OptimizerStates);
        model
            .trainable
            .iter()
            .map(|t| {
                // `Var::zeros`: the moments are variables too.
                let s = sim.shape(t);
                (sim.var(&s), sim.var(&s))
            })
            .collect()
    });
    sim.tag(Part::OptimizerTemporaries);
    for (t, (m, v)) in model.trainable.iter().zip(moments.iter()) {
        if let Some(gr) = grads.map.get(&t.id) {
            sim.adamw_var(t, m, v, gr);
        }
    }
    let optimizer = sim.peak();
    drop(grads);
    StepPeaks {
        forward,
        backward,
        optimizer,
    }
}

/// Layers simulated before the step's peaks are extrapolated (see [`simulate_step`]).
const SIMULATED_LAYERS: u64 = 8;
/// Models with more layers than this are extrapolated; no published Llama has more than 126.
const EXTRAPOLATE_ABOVE: u64 = 256;

/// Simulate two training steps (the first creates the optimizer's moments) of `batch x
/// context` tokens and return each phase's peak, as `bench --mode train` measures them.
///
/// Every layer is simulated up to [`EXTRAPOLATE_ABOVE`] layers (exact). Beyond, so that
/// memory and time do not grow with an absurd layer count, the step is simulated at 6, 7 and
/// 8 layers and each part of each phase's peak extended along its slope (the larger of the
/// two when they differ: the layers are identical, so the live bytes at every moment are
/// affine in their number and the peak is a maximum of such lines; equal to the full
/// simulation wherever the slopes agree, as the tests check on Llama-3-8B).
pub fn simulate_step(
    spec: &ModelSpec,
    dtype: DType,
    cpu: bool,
    batch: u64,
    context: u64,
    lora: Option<&LoraSetup>,
) -> TrainPeaks {
    if spec.num_layers > EXTRAPOLATE_ABOVE {
        extrapolated(spec, dtype, cpu, batch, context, lora, false)
            .unwrap_or_else(|| simulate_layers(spec, dtype, cpu, batch, context, lora))
    } else {
        simulate_layers(spec, dtype, cpu, batch, context, lora)
    }
}

/// The peaks of [`simulate_step`] extended from 6, 7 and 8 layers (None for a model with
/// fewer); with `exact`, only when the three agree on one slope per part.
fn extrapolated(
    spec: &ModelSpec,
    dtype: DType,
    cpu: bool,
    batch: u64,
    context: u64,
    lora: Option<&LoraSetup>,
    exact: bool,
) -> Option<TrainPeaks> {
    let l = spec.num_layers;
    if l <= SIMULATED_LAYERS {
        return None;
    }
    let at = |n: u64| {
        let mut s = spec.clone();
        s.num_layers = n;
        simulate_layers(&s, dtype, cpu, batch, context, lora)
    };
    let (a, b, c) = (
        at(SIMULATED_LAYERS - 2),
        at(SIMULATED_LAYERS - 1),
        at(SIMULATED_LAYERS),
    );
    let extra = l - SIMULATED_LAYERS;
    // Each part's slope, if the three simulations agree on one.
    let extend = |pa: &Parts, pb: &Parts, pc: &Parts| -> Option<Parts> {
        let mut out = *pc;
        for i in 0..out.0.len() {
            let d1 = pb.0[i].saturating_sub(pa.0[i]);
            let d2 = pc.0[i].saturating_sub(pb.0[i]);
            if exact && (d1 != d2 || pb.0[i] < pa.0[i] || pc.0[i] < pb.0[i]) {
                return None;
            }
            out.0[i] = pc.0[i].saturating_add(d1.max(d2).saturating_mul(extra));
        }
        Some(out)
    };
    let d1 = b.trainable_params - a.trainable_params;
    let d2 = c.trainable_params - b.trainable_params;
    (d1 == d2 || !exact).then_some(())?;
    Some(TrainPeaks {
        forward: extend(&a.forward, &b.forward, &c.forward)?,
        backward: extend(&a.backward, &b.backward, &c.backward)?,
        optimizer: extend(&a.optimizer, &b.optimizer, &c.optimizer)?,
        optimizer_first: extend(&a.optimizer_first, &b.optimizer_first, &c.optimizer_first)?,
        trainable_params: c.trainable_params + d2 * extra,
    })
}

/// [`simulate_step`] over every layer of `spec`.
fn simulate_layers(
    spec: &ModelSpec,
    dtype: DType,
    cpu: bool,
    batch: u64,
    context: u64,
    lora: Option<&LoraSetup>,
) -> TrainPeaks {
    let e = dtype.size_in_bytes();
    let sim = Sim::new(cpu, e);
    let d = graph_dims(spec, batch, context);
    let model = SimModel::load(&sim, spec, e, lora);
    let trainable_params: u64 = model
        .trainable
        .iter()
        .map(|t| sim.shape(t).iter().product::<usize>() as u64)
        .sum();
    let mut moments = None;
    let first = step(&sim, &model, &d, e, &mut moments);
    let steady = step(&sim, &model, &d, e, &mut moments);
    TrainPeaks {
        forward: steady.forward,
        backward: steady.backward,
        optimizer: steady.optimizer,
        optimizer_first: first.optimizer,
        trainable_params,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::estimate::train::Target;

    fn spec(name: &str) -> ModelSpec {
        ModelSpec::from_path(std::path::Path::new(&format!("models/{name}"))).expect("config")
    }

    /// A full fine-tune: the moments are two copies of the weights, the optimizer phase holds
    /// every gradient, and `AdamW::step`'s temporaries are 14 tensors the size of the largest
    /// parameter (candle-nn computes on the `Var`s, so each temporary keeps the previous).
    #[test]
    fn full_fine_tune_parts() {
        let s = spec("vramprobe-tiny-llama");
        let p = simulate_step(&s, DType::F32, true, 1, 128, None);
        let w = s.param_count() * 4;
        assert_eq!(p.trainable_params, s.param_count());
        assert_eq!(p.forward.get(Part::Weights), w);
        assert_eq!(p.forward.get(Part::OptimizerStates), 2 * w);
        assert_eq!(p.optimizer.get(Part::Gradients), w);
        let largest = s.vocab_size * s.hidden_size * 4;
        assert_eq!(p.optimizer.get(Part::OptimizerTemporaries), 14 * largest);
        assert_eq!(p.optimizer.total(), p.optimizer_first.total());
        assert!(p.backward.total() > p.forward.total());
        assert_eq!(p.forward.get(Part::Gradients), 0);
    }

    /// Activations grow with the tokens (quadratically through the attention scores); the
    /// optimizer step does not depend on them.
    #[test]
    fn activations_grow_with_tokens() {
        let s = spec("vramprobe-tiny-llama");
        let a = |b, c| simulate_step(&s, DType::F32, true, b, c, None);
        let (short, long, wide) = (a(1, 128), a(1, 512), a(4, 128));
        let act = |p: &TrainPeaks| p.forward.get(Part::Activations);
        assert!(act(&long) > 4 * act(&short));
        assert!(act(&wide) >= 4 * act(&short) - 4096);
        assert_eq!(short.optimizer.total(), long.optimizer.total());
    }

    /// LoRA: only the adapters have moments and gradients; candle still stores gradients for
    /// the frozen weights during backward (three weight-sized tensors each).
    #[test]
    fn lora_trains_the_adapters_only() {
        let s = spec("vramprobe-tiny-llama");
        let l = LoraSetup {
            rank: 8,
            targets: vec![Target::Q, Target::V],
        };
        let p = simulate_step(&s, DType::F32, true, 1, 128, Some(&l));
        let adapters = s.num_layers * 8 * ((256 + 256) + (256 + 64));
        assert_eq!(p.trainable_params, adapters);
        assert_eq!(p.forward.get(Part::OptimizerStates), 2 * adapters * 4);
        assert_eq!(p.optimizer.get(Part::Gradients), adapters * 4);
        let frozen = s.param_count() * 4;
        assert!(p.backward.get(Part::BackwardBuffers) > 2 * frozen);
    }

    /// Llama-3-8B in BF16 on CUDA, the seed's claim: weights, gradients and two BF16 moments
    /// are 8 bytes per parameter (64.2 GB); candle's optimizer step adds 14 copies of the
    /// 1.05 GB lm_head.
    #[test]
    fn llama3_8b_full_fine_tune_optimizer_step() {
        let s = spec("meta-llama-3-8b-instruct");
        let p = simulate_step(&s, DType::BF16, false, 1, 512, None);
        let w = 16_060_522_496;
        let lm_head = 128_256 * 4096 * 2;
        assert_eq!(p.optimizer.total(), 4 * w + 14 * lm_head);
        assert!(p.backward.total() > 64_000_000_000 && p.backward.total() < 80_000_000_000);
        let long = simulate_step(&s, DType::BF16, false, 1, 1024, None);
        assert!(long.total_bytes() > 80_000_000_000);
    }

    /// The peaks extended from 6, 7 and 8 layers equal the full simulation's, part by part,
    /// for full fine-tunes and LoRA, CPU and CUDA.
    #[test]
    fn extrapolated_layers_match_the_full_simulation() {
        let lora = LoraSetup {
            rank: 8,
            targets: vec![Target::Q, Target::V],
        };
        let s = spec("meta-llama-3-8b-instruct");
        let mut affine = 0;
        for (cpu, dtype) in [(true, DType::F32), (false, DType::BF16)] {
            for l in [None, Some(&lora)] {
                let full = simulate_layers(&s, dtype, cpu, 2, 64, l);
                if let Some(fast) = extrapolated(&s, dtype, cpu, 2, 64, l, true) {
                    affine += 1;
                    assert_eq!(fast, full, "cpu {cpu} lora {}", l.is_some());
                }
                // The approximation never falls below the full simulation.
                let approx = extrapolated(&s, dtype, cpu, 2, 64, l, false).expect("32 layers");
                assert!(approx.total_bytes() >= full.total_bytes(), "cpu {cpu}");
            }
        }
        assert!(
            affine >= 2,
            "the slopes agree for Llama-3-8B ({affine} of 4)"
        );
        // An absurd depth costs no more than 8 layers' simulation, and its weights are there.
        let mut deep = s.clone();
        deep.num_layers = 16_384;
        let t = simulate_step(&deep, DType::BF16, false, 1, 128, None);
        assert!(
            t.total_bytes() > 16_384 * 2 * 218_112_000,
            "{}",
            t.total_bytes()
        );
    }
}
