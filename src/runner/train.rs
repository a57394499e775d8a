//! The measured side of training: [`crate::estimate::train_graph`] executed by candle on
//! trainable `Var`s, `loss.backward()`, and candle-nn's `AdamW`, each phase's peak read from
//! the same probes as inference.

use super::{
    candle_config, candle_dtype, create_gemm_slabs, local_tensors, phase_failure,
    phase_measurement, synthetic_tensor, Accel, PhaseFailure, PhaseMeasurement, RunError,
    WeightsSource,
};
use crate::estimate::candle_train::{graph_dims, LoraSetup, TrainPhase};
use crate::estimate::train::Target;
use crate::estimate::train_graph::{self, Inputs, Layer, Linear, Ops, Params};
use crate::probe::MemoryProbe;
use crate::spec::{DType, ModelSpec};
use candle_core::{Device, Tensor, Var, D};
use candle_nn::{AdamW, Optimizer, ParamsAdamW};
use std::collections::HashMap;
use std::time::Instant;

/// candle's tensors behind the graph's operations.
pub struct CandleOps {
    dtype: candle_core::DType,
}

type R = Result<Tensor, candle_core::Error>;

impl Ops for CandleOps {
    type T = Tensor;
    type E = candle_core::Error;

    fn dims(&self, x: &Tensor) -> Vec<usize> {
        x.dims().to_vec()
    }
    fn reshape(&self, x: &Tensor, shape: &[usize]) -> R {
        x.reshape(shape)
    }
    fn transpose(&self, x: &Tensor, d1: usize, d2: usize) -> R {
        x.transpose(d1, d2)
    }
    fn contiguous(&self, x: &Tensor) -> R {
        x.contiguous()
    }
    fn matmul(&self, a: &Tensor, b: &Tensor) -> R {
        a.matmul(b)
    }
    fn add(&self, a: &Tensor, b: &Tensor) -> R {
        a.broadcast_add(b)
    }
    fn sub(&self, a: &Tensor, b: &Tensor) -> R {
        a.broadcast_sub(b)
    }
    fn mul(&self, a: &Tensor, b: &Tensor) -> R {
        a.broadcast_mul(b)
    }
    fn div(&self, a: &Tensor, b: &Tensor) -> R {
        a.broadcast_div(b)
    }
    fn affine(&self, x: &Tensor, mul: f64, add: f64) -> R {
        x.affine(mul, add)
    }
    fn sqr(&self, x: &Tensor) -> R {
        x.sqr()
    }
    fn sqrt(&self, x: &Tensor) -> R {
        x.sqrt()
    }
    fn exp(&self, x: &Tensor) -> R {
        x.exp()
    }
    fn log(&self, x: &Tensor) -> R {
        x.log()
    }
    fn neg(&self, x: &Tensor) -> R {
        x.neg()
    }
    fn silu(&self, x: &Tensor) -> R {
        x.silu()
    }
    fn sum_keepdim_last(&self, x: &Tensor) -> R {
        x.sum_keepdim(D::Minus1)
    }
    fn max_keepdim_last(&self, x: &Tensor) -> R {
        x.max_keepdim(D::Minus1)
    }
    fn narrow(&self, x: &Tensor, dim: usize, start: usize, len: usize) -> R {
        x.narrow(dim, start, len)
    }
    fn cat(&self, xs: &[&Tensor], dim: usize) -> R {
        Tensor::cat(xs, dim)
    }
    fn index_select0(&self, w: &Tensor, ids: &Tensor) -> R {
        w.index_select(ids, 0)
    }
    fn gather_last(&self, x: &Tensor, ids: &Tensor) -> R {
        x.gather(ids, D::Minus1)
    }
    fn sum_all(&self, x: &Tensor) -> R {
        x.sum_all()
    }
    fn cast(&self, x: &Tensor, f32: bool) -> R {
        x.to_dtype(if f32 {
            candle_core::DType::F32
        } else {
            self.dtype
        })
    }
}

/// Every phase of one training point; a phase after a failed one is not attempted.
#[derive(Debug, Clone, PartialEq)]
pub struct TrainMeasurement {
    pub phases: Vec<(TrainPhase, Result<PhaseMeasurement, PhaseFailure>)>,
    /// The loss of each step (a finite number shows the step computed something real).
    pub losses: Vec<f32>,
}

/// A model loaded for training: its parameters as `Var`s (full fine-tune) or frozen
/// tensors with `Var` adapters (LoRA).
pub struct TrainRunner {
    params: Params<Tensor>,
    trainable: Vec<Var>,
    spec: ModelSpec,
    dtype: candle_core::DType,
    device: Device,
    accel: std::sync::Arc<Accel>,
    /// Bytes the parameters occupy (adapters included), as measured.
    pub weights_bytes: u64,
    /// One-off bytes the warm-up left allocated; excluded from every point.
    pub warmup_residue_bytes: u64,
    pub trainable_params: u64,
}

impl TrainRunner {
    /// Load the model for training and measure what its parameters occupy.
    ///
    /// # Errors
    /// As [`super::Runner::load`].
    pub fn load(
        spec: &ModelSpec,
        dtype: DType,
        weights: &WeightsSource,
        lora: Option<&LoraSetup>,
        accel: std::sync::Arc<Accel>,
        probe: &dyn MemoryProbe,
    ) -> Result<Self, RunError> {
        // The same limits as inference (no biases, derived head_dim).
        candle_config(spec)?;
        let device = accel.device.clone();
        let cdt = candle_dtype(dtype);
        let seed = match weights {
            WeightsSource::Synthetic { seed } => *seed,
            WeightsSource::Local(_) => 0,
        };
        if !device.is_cpu() {
            device.set_seed(seed)?;
        }
        accel.settle();
        let baseline = probe.current_bytes();
        let mut tensors: HashMap<String, Tensor> = match weights {
            WeightsSource::Synthetic { seed } => spec
                .tensors()
                .iter()
                .enumerate()
                .map(|(i, t)| Ok((t.name.clone(), synthetic_tensor(t, *seed, i, cdt, &device)?)))
                .collect::<Result<_, RunError>>()?,
            WeightsSource::Local(dir) => local_tensors(spec, dir, cdt, &device)?,
        };
        let mut trainable = Vec::new();
        let full = lora.is_none();
        let mut take = |name: &str| -> Result<Tensor, RunError> {
            let t = tensors.remove(name).ok_or_else(|| RunError::BadTensor {
                path: spec.source.clone().into(),
                name: name.into(),
                reason: "missing".into(),
            })?;
            if full {
                let v = Var::from_tensor(&t)?;
                let out = v.as_tensor().clone();
                trainable.push(v);
                Ok(out)
            } else {
                Ok(t)
            }
        };
        let mut adapters = Vec::new();
        let mut lin = |take: &mut dyn FnMut(&str) -> Result<Tensor, RunError>,
                       name: &str,
                       target: Option<Target>|
         -> Result<Linear<Tensor>, RunError> {
            let w = take(&format!("{name}.weight"))?;
            let adapter = match (lora, target) {
                (Some(l), Some(t)) if l.targets.contains(&t) => {
                    let (out, inp) = w.dims2()?;
                    let r = l.rank as usize;
                    // PEFT's initialisation: A random, B zero (the adapter starts as a no-op).
                    let bound = (1.0 / inp as f64).sqrt();
                    let a = Var::from_tensor(
                        &Tensor::rand(-bound as f32, bound as f32, (r, inp), &device)?
                            .to_dtype(cdt)?,
                    )?;
                    let b = Var::zeros((out, r), cdt, &device)?;
                    let pair = (a.as_tensor().clone(), b.as_tensor().clone(), 2.0);
                    adapters.push(a);
                    adapters.push(b);
                    Some(pair)
                }
                _ => None,
            };
            Ok(Linear { w, lora: adapter })
        };
        let embed = take("model.embed_tokens.weight")?;
        let mut layers = Vec::new();
        for i in 0..spec.num_layers {
            let p = format!("model.layers.{i}");
            layers.push(Layer {
                input_layernorm: take(&format!("{p}.input_layernorm.weight"))?,
                q: lin(&mut take, &format!("{p}.self_attn.q_proj"), Some(Target::Q))?,
                k: lin(&mut take, &format!("{p}.self_attn.k_proj"), Some(Target::K))?,
                v: lin(&mut take, &format!("{p}.self_attn.v_proj"), Some(Target::V))?,
                o: lin(&mut take, &format!("{p}.self_attn.o_proj"), Some(Target::O))?,
                post_attention_layernorm: take(&format!("{p}.post_attention_layernorm.weight"))?,
                gate: lin(&mut take, &format!("{p}.mlp.gate_proj"), Some(Target::Gate))?,
                up: lin(&mut take, &format!("{p}.mlp.up_proj"), Some(Target::Up))?,
                down: lin(&mut take, &format!("{p}.mlp.down_proj"), Some(Target::Down))?,
            });
        }
        let norm = take("model.norm.weight")?;
        let lm_head = if spec.tie_word_embeddings {
            Linear {
                w: embed.clone(),
                lora: None,
            }
        } else {
            lin(&mut take, "lm_head", None)?
        };
        trainable.extend(adapters);
        drop(tensors);
        let params = Params {
            embed,
            layers,
            norm,
            lm_head,
        };
        accel.settle();
        let weights_bytes = probe.current_bytes().saturating_sub(baseline);
        let trainable_params = trainable.iter().map(|v| v.elem_count() as u64).sum();
        let mut runner = TrainRunner {
            params,
            trainable,
            spec: spec.clone(),
            dtype: cdt,
            device,
            accel,
            weights_bytes,
            warmup_residue_bytes: 0,
            trainable_params,
        };
        runner.warm_up(probe)?;
        Ok(runner)
    }

    /// A small forward and backward pass, so one-off runtime buffers exist before measuring.
    fn warm_up(&mut self, probe: &dyn MemoryProbe) -> Result<(), RunError> {
        let before = probe.current_bytes();
        create_gemm_slabs();
        {
            let s = 16.min(self.spec.max_position_embeddings as usize - 1);
            let inputs = self.inputs(2, s)?;
            let d = graph_dims(&self.spec, 2, s as u64);
            let loss = train_graph::loss(&self.ops(), &self.params, &inputs, &d)?;
            let grads = loss.backward()?;
            drop(grads);
        }
        self.accel.settle();
        self.warmup_residue_bytes = probe.current_bytes().saturating_sub(before);
        Ok(())
    }

    fn ops(&self) -> CandleOps {
        CandleOps { dtype: self.dtype }
    }

    /// Token ids, next-token targets, rotary tables and the causal mask of one step.
    fn inputs(&self, b: usize, s: usize) -> Result<Inputs<Tensor>, RunError> {
        let vocab = self.spec.vocab_size as usize;
        let n = b * s;
        let ids: Vec<u32> = (0..n).map(|i| (i * 7919 % vocab) as u32).collect();
        let targets: Vec<u32> = (0..n).map(|i| ((i + 1) * 7919 % vocab) as u32).collect();
        let d = self.spec.head_dim as usize;
        let half = d / 2;
        let theta = self.spec.rope_theta;
        let mut cos = Vec::with_capacity(s * d);
        let mut sin = Vec::with_capacity(s * d);
        for p in 0..s {
            for j in 0..d {
                let freq = 1.0 / theta.powf((2 * (j % half)) as f64 / d as f64);
                let a = p as f64 * freq;
                cos.push(a.cos() as f32);
                sin.push(a.sin() as f32);
            }
        }
        let mask: Vec<f32> = (0..s * s)
            .map(|i| if i % s > i / s { f32::NEG_INFINITY } else { 0. })
            .collect();
        let dev = &self.device;
        Ok(Inputs {
            ids: Tensor::from_vec(ids, n, dev)?,
            targets: Tensor::from_vec(targets, (n, 1), dev)?,
            cos: Tensor::from_vec(cos, (s, d), dev)?.to_dtype(self.dtype)?,
            sin: Tensor::from_vec(sin, (s, d), dev)?.to_dtype(self.dtype)?,
            mask: Tensor::from_vec(mask, (s, s), dev)?.to_dtype(self.dtype)?,
        })
    }

    /// Two training steps of `batch x context` tokens: the first creates the optimizer's
    /// moments (its optimizer phase is recorded as `train_optimizer_first`), the second is
    /// the steady state (`train_forward`, `train_backward`, `train_optimizer`). Peaks are
    /// relative to the run's baseline, so the parameters are included. Running out of device
    /// memory is a result; the runner stays usable.
    ///
    /// # Errors
    /// [`RunError::Candle`] for anything but out-of-memory on the CPU.
    pub fn run_point(
        &self,
        batch: u64,
        context: u64,
        probes: &[&dyn MemoryProbe],
    ) -> Result<TrainMeasurement, RunError> {
        let (b, s) = (batch as usize, context as usize);
        let primary = probes[0];
        self.accel.settle();
        let offset = primary.current_bytes().saturating_sub(self.weights_bytes);
        let start: Vec<u64> = probes.iter().map(|p| p.current_bytes()).collect();
        let finish = |secs: f64| phase_measurement(probes, &start, offset, secs, b * s);
        let on_gpu = !self.device.is_cpu();
        let failure = |e: candle_core::Error| phase_failure(e, on_gpu);
        let reset = || {
            for p in probes {
                p.reset_peak();
            }
        };
        let d = graph_dims(&self.spec, batch, context);
        let ops = self.ops();
        let mut out = TrainMeasurement {
            phases: Vec::new(),
            losses: Vec::new(),
        };
        let mut opt: Option<AdamW> = None;
        let params = ParamsAdamW {
            lr: 1e-5,
            ..ParamsAdamW::default()
        };
        for step in 0..2 {
            // forward
            reset();
            let t = Instant::now();
            let fwd = (|| {
                let inputs = self.inputs(b, s)?;
                let loss = train_graph::loss(&ops, &self.params, &inputs, &d)?;
                self.device.synchronize()?;
                Ok::<_, RunError>((inputs, loss))
            })();
            let (inputs, loss) = match fwd {
                Ok(x) => x,
                Err(RunError::Candle(e)) => {
                    out.phases.push((TrainPhase::Forward, Err(failure(e)?)));
                    break;
                }
                Err(e) => return Err(e),
            };
            if step == 1 {
                out.phases
                    .push((TrainPhase::Forward, Ok(finish(t.elapsed().as_secs_f64()))));
            }
            out.losses
                .push(loss.to_dtype(candle_core::DType::F32)?.to_scalar::<f32>()?);
            // backward
            reset();
            let t = Instant::now();
            let grads = loss.backward().and_then(|g| {
                self.device.synchronize()?;
                Ok(g)
            });
            let grads = match grads {
                Ok(g) => g,
                Err(e) => {
                    out.phases.push((TrainPhase::Backward, Err(failure(e)?)));
                    break;
                }
            };
            if step == 1 {
                out.phases
                    .push((TrainPhase::Backward, Ok(finish(t.elapsed().as_secs_f64()))));
            }
            drop(loss);
            drop(inputs);
            // Keep only the parameters' gradients (candle also stores the constants').
            let mut grads = grads;
            let mut kept = candle_core::backprop::GradStore::default();
            for v in &self.trainable {
                if let Some(g) = grads.remove(v.as_tensor()) {
                    kept.insert(v.as_tensor(), g);
                }
            }
            drop(grads);
            self.accel.settle();
            // optimizer step (the first creates the moments)
            reset();
            let t = Instant::now();
            let stepped = (|| {
                if opt.is_none() {
                    opt = Some(AdamW::new(self.trainable.clone(), params.clone())?);
                }
                if let Some(o) = opt.as_mut() {
                    o.step(&kept)?;
                }
                self.device.synchronize()
            })();
            let phase = if step == 0 {
                TrainPhase::OptimizerFirst
            } else {
                TrainPhase::Optimizer
            };
            match stepped {
                Ok(()) => out
                    .phases
                    .push((phase, Ok(finish(t.elapsed().as_secs_f64())))),
                Err(e) => {
                    out.phases.push((phase, Err(failure(e)?)));
                    break;
                }
            }
            drop(kept);
            self.accel.settle();
        }
        drop(opt);
        self.accel.settle();
        Ok(out)
    }
}
