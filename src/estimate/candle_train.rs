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

use super::train_graph::{self, Dims, Inputs, Layer, Linear, Ops, Params};
use crate::spec::{DType, ModelSpec};
use serde::Serialize;
use std::cell::RefCell;
use std::collections::HashMap;
use std::convert::Infallible;
use std::rc::Rc;

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

#[derive(Debug, Clone, Copy, PartialEq)]
enum Unary {
    Sqr,
    Sqrt,
    Exp,
    Log,
    Neg,
    Silu,
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum Binary {
    Add,
    Sub,
    Mul,
    Div,
}

#[derive(Debug, Clone)]
enum Op {
    Unary(usize, Unary),
    Binary(usize, usize, Binary),
    Affine(usize, f64),
    Matmul(usize, usize),
    Reshape(usize),
    Transpose(usize, usize, usize),
    Broadcast(usize),
    Narrow(usize, usize, usize, usize),
    Cat(Vec<usize>, usize),
    Copy(usize),
    ToDType(usize),
    /// Sum over dims, keeping them.
    Sum(usize),
    /// Max over the last dim, kept.
    Max(usize),
    IndexSelect(usize, usize),
    Gather(usize, usize),
    Cmp(usize),
}

impl Op {
    fn inputs(&self) -> Vec<usize> {
        match self {
            Op::Unary(a, _)
            | Op::Affine(a, _)
            | Op::Reshape(a)
            | Op::Transpose(a, _, _)
            | Op::Broadcast(a)
            | Op::Narrow(a, _, _, _)
            | Op::Copy(a)
            | Op::ToDType(a)
            | Op::Sum(a)
            | Op::Max(a)
            | Op::Cmp(a) => vec![*a],
            Op::Binary(a, b, _) | Op::Matmul(a, b) | Op::IndexSelect(a, b) | Op::Gather(a, b) => {
                vec![*a, *b]
            }
            Op::Cat(v, _) => v.clone(),
        }
    }
}

struct Node {
    shape: Vec<usize>,
    stride: Vec<usize>,
    /// Bytes per element.
    esize: u64,
    int: bool,
    storage: usize,
    op: Option<Op>,
    var: bool,
    refs: usize,
}

struct Storage {
    bytes: u64,
    refs: usize,
    part: Part,
}

struct Inner {
    nodes: Vec<Node>,
    storages: Vec<Storage>,
    live: Parts,
    peak: Parts,
    tag: Part,
    cpu: bool,
    model_esize: u64,
}

fn contiguous_strides(shape: &[usize]) -> Vec<usize> {
    let mut stride = vec![1; shape.len()];
    for i in (0..shape.len().saturating_sub(1)).rev() {
        stride[i] = stride[i + 1] * shape[i + 1];
    }
    stride
}

/// candle's `Shape::is_contiguous`: dimensions of size 1 do not count.
fn is_contiguous(shape: &[usize], stride: &[usize]) -> bool {
    let mut acc = 1;
    for (&st, &d) in stride.iter().zip(shape).rev() {
        if d > 1 && st != acc {
            return false;
        }
        acc *= d;
    }
    true
}

/// gemm's reduction blocking and tile rows, as in the inference profile.
const GEMM_KC: u64 = 256;
const GEMM_MR: u64 = 16;
const GEMM_PREPACK_MAX: u64 = 4096;

impl Inner {
    fn alloc(&mut self, bytes: u64) -> usize {
        self.storages.push(Storage {
            bytes,
            refs: 1,
            part: self.tag,
        });
        self.live.0[self.tag as usize] += bytes;
        if self.live.total() > self.peak.total() {
            self.peak = self.live;
        }
        self.storages.len() - 1
    }

    fn release_storage(&mut self, s: usize) {
        let st = &mut self.storages[s];
        st.refs -= 1;
        if st.refs == 0 {
            let (part, bytes) = (st.part, st.bytes);
            self.live.0[part as usize] -= bytes;
        }
    }

    fn tracks(&self, id: usize) -> bool {
        self.nodes[id].var || self.nodes[id].op.is_some()
    }

    fn release(&mut self, id: usize) {
        let mut stack = vec![id];
        while let Some(i) = stack.pop() {
            let n = &mut self.nodes[i];
            n.refs -= 1;
            if n.refs == 0 {
                let (storage, op) = (n.storage, n.op.take());
                self.release_storage(storage);
                if let Some(op) = op {
                    stack.extend(op.inputs());
                }
            }
        }
    }

    /// A new node; `op` is kept only if one of its inputs tracks (candle's `BackpropOp`).
    fn node(
        &mut self,
        shape: Vec<usize>,
        stride: Vec<usize>,
        esize: u64,
        storage: usize,
        op: Option<Op>,
    ) -> usize {
        let op = op.filter(|op| op.inputs().iter().any(|&i| self.tracks(i)));
        if let Some(op) = &op {
            for i in op.inputs() {
                self.nodes[i].refs += 1;
            }
        }
        self.nodes.push(Node {
            shape,
            stride,
            esize,
            int: false,
            storage,
            op,
            var: false,
            refs: 1,
        });
        self.nodes.len() - 1
    }

    /// A node with its own new contiguous storage.
    fn fresh(&mut self, shape: Vec<usize>, esize: u64, op: Option<Op>) -> usize {
        let n: usize = shape.iter().product();
        let storage = self.alloc(n as u64 * esize);
        let stride = contiguous_strides(&shape);
        self.node(shape, stride, esize, storage, op)
    }

    /// A view of `src`'s storage.
    fn view(&mut self, src: usize, shape: Vec<usize>, stride: Vec<usize>, op: Op) -> usize {
        let (storage, esize) = (self.nodes[src].storage, self.nodes[src].esize);
        self.storages[storage].refs += 1;
        self.node(shape, stride, esize, storage, Some(op))
    }
}

/// A tensor of the simulation: a counted reference to a node, like candle's `Tensor`.
pub struct H {
    id: usize,
    sim: Rc<RefCell<Inner>>,
}

impl Clone for H {
    fn clone(&self) -> Self {
        self.sim.borrow_mut().nodes[self.id].refs += 1;
        H {
            id: self.id,
            sim: self.sim.clone(),
        }
    }
}

impl Drop for H {
    fn drop(&mut self) {
        self.sim.borrow_mut().release(self.id);
    }
}

/// The simulator: candle's tensor semantics on shapes.
pub struct Sim {
    inner: Rc<RefCell<Inner>>,
}

type R = Result<H, Infallible>;

impl Sim {
    fn new(cpu: bool, model_esize: u64) -> Self {
        Self {
            inner: Rc::new(RefCell::new(Inner {
                nodes: Vec::new(),
                storages: Vec::new(),
                live: Parts::default(),
                peak: Parts::default(),
                tag: Part::Weights,
                cpu,
                model_esize,
            })),
        }
    }

    fn h(&self, id: usize) -> H {
        H {
            id,
            sim: self.inner.clone(),
        }
    }

    /// Another reference to node `id` (which must be alive).
    fn handle(&self, id: usize) -> H {
        self.inner.borrow_mut().nodes[id].refs += 1;
        self.h(id)
    }

    fn tag(&self, p: Part) {
        self.inner.borrow_mut().tag = p;
    }

    fn reset_peak(&self) {
        let mut s = self.inner.borrow_mut();
        s.peak = s.live;
    }

    fn peak(&self) -> Parts {
        self.inner.borrow().peak
    }

    fn live(&self) -> Parts {
        self.inner.borrow().live
    }

    fn shape(&self, x: &H) -> Vec<usize> {
        self.inner.borrow().nodes[x.id].shape.clone()
    }

    fn tensor(&self, shape: &[usize], esize: u64, int: bool) -> H {
        let mut s = self.inner.borrow_mut();
        let id = s.fresh(shape.to_vec(), esize, None);
        s.nodes[id].int = int;
        drop(s);
        self.h(id)
    }

    fn var(&self, shape: &[usize]) -> H {
        let e = self.inner.borrow().model_esize;
        let v = self.tensor(shape, e, false);
        self.inner.borrow_mut().nodes[v.id].var = true;
        v
    }

    fn zeros_like(&self, x: &H) -> H {
        let (shape, e) = {
            let s = self.inner.borrow();
            (s.nodes[x.id].shape.clone(), s.nodes[x.id].esize)
        };
        self.tensor(&shape, e, false)
    }

    fn detach(&self, x: &H) -> H {
        let mut s = self.inner.borrow_mut();
        if s.nodes[x.id].op.is_none() && !s.nodes[x.id].var {
            s.nodes[x.id].refs += 1;
            drop(s);
            return self.h(x.id);
        }
        let n = &s.nodes[x.id];
        let (shape, stride, esize, storage) =
            (n.shape.clone(), n.stride.clone(), n.esize, n.storage);
        s.storages[storage].refs += 1;
        let id = s.node(shape, stride, esize, storage, None);
        drop(s);
        self.h(id)
    }

    fn broadcast_as(&self, x: &H, shape: &[usize]) -> H {
        let mut s = self.inner.borrow_mut();
        let (src_shape, src_stride) = (s.nodes[x.id].shape.clone(), s.nodes[x.id].stride.clone());
        let added = shape.len() - src_shape.len();
        let mut stride = vec![0; added];
        for (i, (&d, &st)) in src_shape.iter().zip(&src_stride).enumerate() {
            stride.push(if d == shape[added + i] { st } else { 0 });
        }
        let id = s.view(x.id, shape.to_vec(), stride, Op::Broadcast(x.id));
        drop(s);
        self.h(id)
    }

    fn unary(&self, x: &H, u: Unary) -> H {
        let mut s = self.inner.borrow_mut();
        let (shape, e) = (s.nodes[x.id].shape.clone(), s.nodes[x.id].esize);
        let id = s.fresh(shape, e, Some(Op::Unary(x.id, u)));
        drop(s);
        self.h(id)
    }

    fn cmp(&self, a: &H, b: &H) -> H {
        // candle's cmp broadcasts nothing here (same shapes); u8 result.
        let _ = b;
        let mut s = self.inner.borrow_mut();
        let shape = s.nodes[a.id].shape.clone();
        let id = s.fresh(shape, 1, Some(Op::Cmp(a.id)));
        drop(s);
        self.h(id)
    }

    /// Cast to `esize` bytes per element (`to_dtype`).
    fn to_esize(&self, x: &H, esize: u64) -> H {
        let mut s = self.inner.borrow_mut();
        if s.nodes[x.id].esize == esize {
            s.nodes[x.id].refs += 1;
            drop(s);
            return self.h(x.id);
        }
        let shape = s.nodes[x.id].shape.clone();
        let id = s.fresh(shape, esize, Some(Op::ToDType(x.id)));
        drop(s);
        self.h(id)
    }

    fn binary(&self, a: &H, b: &H, op: Binary) -> H {
        let (sa, sb) = (self.shape(a), self.shape(b));
        let rank = sa.len().max(sb.len());
        let mut shape = vec![0; rank];
        for i in 0..rank {
            let da = if i + sa.len() >= rank {
                sa[i + sa.len() - rank]
            } else {
                1
            };
            let db = if i + sb.len() >= rank {
                sb[i + sb.len() - rank]
            } else {
                1
            };
            shape[i] = da.max(db);
        }
        let a2 = if sa != shape {
            self.broadcast_as(a, &shape)
        } else {
            a.clone()
        };
        let b2 = if sb != shape {
            self.broadcast_as(b, &shape)
        } else {
            b.clone()
        };
        let mut s = self.inner.borrow_mut();
        let e = s.nodes[a.id].esize;
        let id = s.fresh(shape, e, Some(Op::Binary(a2.id, b2.id, op)));
        drop(s);
        self.h(id)
    }

    fn sum_keepdims(&self, x: &H, dims: &[usize]) -> H {
        let mut shape = self.shape(x);
        for &d in dims {
            shape[d] = 1;
        }
        let mut s = self.inner.borrow_mut();
        let e = s.nodes[x.id].esize;
        let id = s.fresh(shape, e, Some(Op::Sum(x.id)));
        drop(s);
        self.h(id)
    }

    fn transpose_h(&self, x: &H, d1: usize, d2: usize) -> H {
        if d1 == d2 {
            return x.clone();
        }
        let mut s = self.inner.borrow_mut();
        let (mut shape, mut stride) = (s.nodes[x.id].shape.clone(), s.nodes[x.id].stride.clone());
        shape.swap(d1, d2);
        stride.swap(d1, d2);
        let id = s.view(x.id, shape, stride, Op::Transpose(x.id, d1, d2));
        drop(s);
        self.h(id)
    }

    fn t(&self, x: &H) -> H {
        let r = self.shape(x).len();
        self.transpose_h(x, r - 2, r - 1)
    }

    fn reshape_h(&self, x: &H, shape: &[usize]) -> H {
        let mut s = self.inner.borrow_mut();
        let contiguous = is_contiguous(&s.nodes[x.id].shape, &s.nodes[x.id].stride);
        let id = if contiguous {
            s.view(
                x.id,
                shape.to_vec(),
                contiguous_strides(shape),
                Op::Reshape(x.id),
            )
        } else {
            let e = s.nodes[x.id].esize;
            s.fresh(shape.to_vec(), e, Some(Op::Reshape(x.id)))
        };
        drop(s);
        self.h(id)
    }

    fn matmul_h(&self, a: &H, b: &H) -> H {
        let (sa, sb) = (self.shape(a), self.shape(b));
        let (m, k, n) = (sa[sa.len() - 2], sa[sa.len() - 1], sb[sb.len() - 1]);
        let mut shape = sa[..sa.len() - 2].to_vec();
        shape.extend([m, n]);
        let mut s = self.inner.borrow_mut();
        let e = s.nodes[a.id].esize;
        // CPU: gemm packs the right operand per call when the output is narrow enough; in
        // bf16/f16 candle widens both operands to f32 and multiplies into an f32 buffer.
        let mut transient = 0;
        if s.cpu && m >= 2 && (n as u64) <= GEMM_PREPACK_MAX {
            transient += (k as u64).min(GEMM_KC) * (n as u64).next_multiple_of(GEMM_MR) * 4;
        }
        if s.cpu && e != 4 {
            let count = |x: &[usize]| x.iter().product::<usize>() as u64;
            transient += (count(&sa) + count(&sb) + count(&shape)) * 4;
        }
        let scratch = (transient > 0).then(|| s.alloc(transient));
        let id = s.fresh(shape, e, Some(Op::Matmul(a.id, b.id)));
        if let Some(t) = scratch {
            s.release_storage(t);
        }
        drop(s);
        self.h(id)
    }

    fn affine_h(&self, x: &H, mul: f64) -> H {
        let mut s = self.inner.borrow_mut();
        let (shape, e) = (s.nodes[x.id].shape.clone(), s.nodes[x.id].esize);
        let id = s.fresh(shape, e, Some(Op::Affine(x.id, mul)));
        drop(s);
        self.h(id)
    }

    fn narrow_h(&self, x: &H, dim: usize, start: usize, len: usize) -> H {
        let mut s = self.inner.borrow_mut();
        let (mut shape, stride) = (s.nodes[x.id].shape.clone(), s.nodes[x.id].stride.clone());
        if start == 0 && shape[dim] == len {
            s.nodes[x.id].refs += 1;
            drop(s);
            return self.h(x.id);
        }
        shape[dim] = len;
        let id = s.view(x.id, shape, stride, Op::Narrow(x.id, dim, start, len));
        drop(s);
        self.h(id)
    }

    fn cat_h(&self, xs: &[&H], dim: usize) -> H {
        if xs.len() == 1 {
            return xs[0].clone();
        }
        let mut shape = self.shape(xs[0]);
        shape[dim] = xs.iter().map(|x| self.shape(x)[dim]).sum();
        let mut s = self.inner.borrow_mut();
        let e = s.nodes[xs[0].id].esize;
        let id = s.fresh(
            shape,
            e,
            Some(Op::Cat(xs.iter().map(|x| x.id).collect(), dim)),
        );
        drop(s);
        self.h(id)
    }

    fn op_of(&self, id: usize) -> Option<Op> {
        self.inner.borrow().nodes[id].op.clone()
    }

    /// candle's `sorted_nodes`: the nodes that lead to `root` and track gradients, root first.
    fn sorted_nodes(&self, root: usize) -> Vec<usize> {
        let s = self.inner.borrow();
        let mut seen: HashMap<usize, bool> = HashMap::new();
        let mut out = Vec::new();
        // Iterative post-order walk (the recursion of candle's `walk`).
        let mut stack: Vec<(usize, bool)> = vec![(root, false)];
        while let Some((id, expanded)) = stack.pop() {
            if !expanded {
                if seen.contains_key(&id) {
                    continue;
                }
                let n = &s.nodes[id];
                let children = if n.var || n.int {
                    Vec::new()
                } else {
                    match &n.op {
                        Some(Op::Affine(_, mul)) if *mul == 0. => Vec::new(),
                        Some(Op::Cmp(_)) => Vec::new(),
                        Some(op) => op.inputs(),
                        None => Vec::new(),
                    }
                };
                stack.push((id, true));
                for c in children.into_iter().rev() {
                    if !seen.contains_key(&c) {
                        stack.push((c, false));
                    }
                }
            } else {
                if seen.contains_key(&id) {
                    continue;
                }
                let n = &s.nodes[id];
                let track = if n.var {
                    true
                } else if n.int {
                    false
                } else {
                    match &n.op {
                        Some(Op::Affine(_, mul)) if *mul == 0. => false,
                        Some(Op::Cmp(_)) => false,
                        Some(op) => op.inputs().iter().any(|c| seen.get(c) == Some(&true)),
                        None => false,
                    }
                };
                seen.insert(id, track);
                if track {
                    out.push(id);
                }
            }
        }
        out.reverse();
        out
    }
}

impl Ops for Sim {
    type T = H;
    type E = Infallible;

    fn dims(&self, x: &H) -> Vec<usize> {
        self.shape(x)
    }
    fn reshape(&self, x: &H, shape: &[usize]) -> R {
        Ok(self.reshape_h(x, shape))
    }
    fn transpose(&self, x: &H, d1: usize, d2: usize) -> R {
        Ok(self.transpose_h(x, d1, d2))
    }
    fn contiguous(&self, x: &H) -> R {
        let mut s = self.inner.borrow_mut();
        let n = &s.nodes[x.id];
        if is_contiguous(&n.shape, &n.stride) {
            s.nodes[x.id].refs += 1;
            drop(s);
            return Ok(self.h(x.id));
        }
        let (shape, e) = (n.shape.clone(), n.esize);
        let id = s.fresh(shape, e, Some(Op::Copy(x.id)));
        drop(s);
        Ok(self.h(id))
    }
    fn matmul(&self, a: &H, b: &H) -> R {
        Ok(self.matmul_h(a, b))
    }
    fn add(&self, a: &H, b: &H) -> R {
        Ok(self.binary(a, b, Binary::Add))
    }
    fn sub(&self, a: &H, b: &H) -> R {
        Ok(self.binary(a, b, Binary::Sub))
    }
    fn mul(&self, a: &H, b: &H) -> R {
        Ok(self.binary(a, b, Binary::Mul))
    }
    fn div(&self, a: &H, b: &H) -> R {
        Ok(self.binary(a, b, Binary::Div))
    }
    fn affine(&self, x: &H, mul: f64, _add: f64) -> R {
        Ok(self.affine_h(x, mul))
    }
    fn sqr(&self, x: &H) -> R {
        Ok(self.unary(x, Unary::Sqr))
    }
    fn sqrt(&self, x: &H) -> R {
        Ok(self.unary(x, Unary::Sqrt))
    }
    fn exp(&self, x: &H) -> R {
        Ok(self.unary(x, Unary::Exp))
    }
    fn log(&self, x: &H) -> R {
        Ok(self.unary(x, Unary::Log))
    }
    fn neg(&self, x: &H) -> R {
        Ok(self.unary(x, Unary::Neg))
    }
    fn silu(&self, x: &H) -> R {
        Ok(self.unary(x, Unary::Silu))
    }
    fn sum_keepdim_last(&self, x: &H) -> R {
        let r = self.shape(x).len();
        Ok(self.sum_keepdims(x, &[r - 1]))
    }
    fn max_keepdim_last(&self, x: &H) -> R {
        let mut shape = self.shape(x);
        let r = shape.len();
        shape[r - 1] = 1;
        let mut s = self.inner.borrow_mut();
        let e = s.nodes[x.id].esize;
        let id = s.fresh(shape, e, Some(Op::Max(x.id)));
        drop(s);
        Ok(self.h(id))
    }
    fn narrow(&self, x: &H, dim: usize, start: usize, len: usize) -> R {
        Ok(self.narrow_h(x, dim, start, len))
    }
    fn cat(&self, xs: &[&H], dim: usize) -> R {
        Ok(self.cat_h(xs, dim))
    }
    fn index_select0(&self, w: &H, ids: &H) -> R {
        let n = self.shape(ids)[0];
        let width = self.shape(w)[1];
        let mut s = self.inner.borrow_mut();
        let e = s.nodes[w.id].esize;
        let id = s.fresh(vec![n, width], e, Some(Op::IndexSelect(w.id, ids.id)));
        drop(s);
        Ok(self.h(id))
    }
    fn gather_last(&self, x: &H, ids: &H) -> R {
        let shape = self.shape(ids);
        let mut s = self.inner.borrow_mut();
        let e = s.nodes[x.id].esize;
        let id = s.fresh(shape, e, Some(Op::Gather(x.id, ids.id)));
        drop(s);
        Ok(self.h(id))
    }
    fn sum_all(&self, x: &H) -> R {
        let r = self.shape(x).len();
        let dims: Vec<usize> = (0..r).collect();
        let sum = self.sum_keepdims(x, &dims);
        // squeeze_dims of several dims: a reshape to a scalar (a view).
        Ok(self.reshape_h(&sum, &[]))
    }
    fn cast(&self, x: &H, f32: bool) -> R {
        let e = if f32 {
            4
        } else {
            self.inner.borrow().model_esize
        };
        Ok(self.to_esize(x, e))
    }
}

/// candle's `GradStore`, on simulated tensors.
struct Grads {
    map: HashMap<usize, H>,
}

impl Sim {
    /// `grads.or_insert(arg)`, then `*sum = f(sum)`. Gradients of `Var`s are re-tagged.
    fn accumulate(&self, g: &mut Grads, arg: &H, f: impl FnOnce(&Sim, &H) -> H) {
        g.map.entry(arg.id).or_insert_with(|| self.zeros_like(arg));
        let Some(sum) = g.map.get(&arg.id) else {
            return;
        };
        let new = f(self, sum);
        if self.inner.borrow().nodes[arg.id].var {
            let mut s = self.inner.borrow_mut();
            let st = s.nodes[new.id].storage;
            let (part, bytes) = (s.storages[st].part, s.storages[st].bytes);
            if part != Part::Gradients {
                s.live.0[part as usize] -= bytes;
                s.live.0[Part::Gradients as usize] += bytes;
                s.storages[st].part = Part::Gradients;
            }
        }
        g.map.insert(arg.id, new);
    }

    /// candle-core 0.11.1's `Tensor::backward`, for the ops the graph uses.
    fn backward(&self, loss: &H) -> Grads {
        let sorted = self.sorted_nodes(loss.id);
        let mut g = Grads {
            map: HashMap::new(),
        };
        let ones = self.zeros_like(loss);
        g.map.insert(loss.id, ones);
        for &id in &sorted {
            if self.inner.borrow().nodes[id].var {
                continue;
            }
            let Some(grad0) = g.map.remove(&id) else {
                continue;
            };
            let grad = self.detach(&grad0);
            let node = self.handle(id);
            if let Some(op) = self.op_of(id) {
                self.rule(&mut g, &node, op, &grad);
            }
            drop(grad);
            drop(grad0);
        }
        g
    }

    fn rule(&self, g: &mut Grads, node: &H, op: Op, grad: &H) {
        let h = |id: usize| self.handle(id);
        match op {
            Op::Binary(l, r, Binary::Add) => {
                let (l, r) = (h(l), h(r));
                self.accumulate(g, &l, |s, sum| s.binary(sum, grad, Binary::Add));
                self.accumulate(g, &r, |s, sum| s.binary(sum, grad, Binary::Add));
            }
            Op::Binary(l, r, Binary::Sub) => {
                let (l, r) = (h(l), h(r));
                self.accumulate(g, &l, |s, sum| s.binary(sum, grad, Binary::Add));
                self.accumulate(g, &r, |s, sum| s.binary(sum, grad, Binary::Sub));
            }
            Op::Binary(l, r, Binary::Mul) => {
                let (l, r) = (h(l), h(r));
                let lhs_grad = self.binary(grad, &r, Binary::Mul);
                self.accumulate(g, &l, |s, sum| s.binary(sum, &lhs_grad, Binary::Add));
                let rhs_grad = self.binary(grad, &l, Binary::Mul);
                self.accumulate(g, &r, |s, sum| s.binary(sum, &rhs_grad, Binary::Add));
            }
            Op::Binary(l, r, Binary::Div) => {
                let (l, r) = (h(l), h(r));
                let lhs_grad = self.binary(grad, &r, Binary::Div);
                self.accumulate(g, &l, |s, sum| s.binary(sum, &lhs_grad, Binary::Add));
                let rhs_grad = {
                    let gm = self.binary(grad, &l, Binary::Mul);
                    let r2 = self.unary(&r, Unary::Sqr);
                    self.binary(&gm, &r2, Binary::Div)
                };
                self.accumulate(g, &r, |s, sum| s.binary(sum, &rhs_grad, Binary::Sub));
            }
            Op::ToDType(a) | Op::Copy(a) => {
                let a = h(a);
                let e = self.inner.borrow().nodes[a.id].esize;
                let cast = self.to_esize(grad, e);
                self.accumulate(g, &a, |s, sum| s.binary(sum, &cast, Binary::Add));
            }
            Op::Affine(a, mul) => {
                let a = h(a);
                let arg_grad = self.affine_h(grad, mul);
                self.accumulate(g, &a, |s, sum| s.binary(sum, &arg_grad, Binary::Add));
            }
            Op::Unary(a, Unary::Log) => {
                let a = h(a);
                self.accumulate(g, &a, |s, sum| {
                    let d = s.binary(grad, &a, Binary::Div);
                    s.binary(sum, &d, Binary::Add)
                });
            }
            Op::Unary(a, Unary::Exp) => {
                let a = h(a);
                self.accumulate(g, &a, |s, sum| {
                    let d = s.binary(grad, node, Binary::Mul);
                    s.binary(sum, &d, Binary::Add)
                });
            }
            Op::Unary(a, Unary::Neg) => {
                let a = h(a);
                self.accumulate(g, &a, |s, sum| s.binary(sum, grad, Binary::Sub));
            }
            Op::Unary(a, Unary::Silu) => {
                let a = h(a);
                // or_insert first, then sigmoid(x) * (1 - node) + node, then grad * that.
                g.map.entry(a.id).or_insert_with(|| self.zeros_like(&a));
                let sigmoid = {
                    let n = self.unary(&a, Unary::Neg);
                    let e = self.unary(&n, Unary::Exp);
                    let p = self.affine_h(&e, 1.);
                    // recip: a unary op of the same size
                    self.affine_h(&p, 1.)
                };
                let one_minus = self.affine_h(node, -1.);
                let prod = self.binary(&sigmoid, &one_minus, Binary::Mul);
                let silu_grad = self.binary(&prod, node, Binary::Add);
                drop(prod);
                drop(one_minus);
                drop(sigmoid);
                let gs = self.binary(grad, &silu_grad, Binary::Mul);
                self.accumulate(g, &a, |s, sum| s.binary(sum, &gs, Binary::Add));
            }
            Op::Unary(a, Unary::Sqr) => {
                let a = h(a);
                let arg_grad = {
                    let m = self.binary(&a, grad, Binary::Mul);
                    self.affine_h(&m, 2.)
                };
                self.accumulate(g, &a, |s, sum| s.binary(sum, &arg_grad, Binary::Add));
            }
            Op::Unary(a, Unary::Sqrt) => {
                let a = h(a);
                let arg_grad = {
                    let d = self.binary(grad, node, Binary::Div);
                    self.affine_h(&d, 0.5)
                };
                self.accumulate(g, &a, |s, sum| s.binary(sum, &arg_grad, Binary::Add));
            }
            Op::Matmul(l, r) => {
                let (l, r) = (h(l), h(r));
                let lhs_grad = {
                    let rt = self.t(&r);
                    self.matmul_h(grad, &rt)
                };
                self.accumulate(g, &l, |s, sum| s.binary(sum, &lhs_grad, Binary::Add));
                let rhs_grad = {
                    let lt = self.t(&l);
                    self.matmul_h(&lt, grad)
                };
                self.accumulate(g, &r, |s, sum| s.binary(sum, &rhs_grad, Binary::Add));
            }
            Op::Reshape(a) => {
                let a = h(a);
                let shape = self.shape(&a);
                let arg_grad = self.reshape_h(grad, &shape);
                self.accumulate(g, &a, |s, sum| s.binary(sum, &arg_grad, Binary::Add));
            }
            Op::Transpose(a, d1, d2) => {
                let a = h(a);
                let arg_grad = self.transpose_h(grad, d1, d2);
                self.accumulate(g, &a, |s, sum| s.binary(sum, &arg_grad, Binary::Add));
            }
            Op::Broadcast(a) => {
                let a = h(a);
                let (node_dims, arg_dims) = (self.shape(node), self.shape(&a));
                let left = node_dims.len() - arg_dims.len();
                let mut sum_dims: Vec<usize> = (0..left).collect();
                for (i, (&nd, &ad)) in node_dims[left..].iter().zip(&arg_dims).enumerate() {
                    if nd != ad {
                        sum_dims.push(i + left);
                    }
                }
                let mut arg_grad = self.sum_keepdims(grad, &sum_dims);
                for _ in 0..left {
                    let mut shape = self.shape(&arg_grad);
                    shape.remove(0);
                    arg_grad = self.reshape_h(&arg_grad, &shape);
                }
                self.accumulate(g, &a, |s, sum| {
                    let shape = s.shape(sum);
                    let b = s.broadcast_as(&arg_grad, &shape);
                    s.binary(sum, &b, Binary::Add)
                });
            }
            Op::Sum(a) => {
                let a = h(a);
                let shape = self.shape(&a);
                let b = self.broadcast_as(grad, &shape);
                self.accumulate(g, &a, |s, sum| s.binary(sum, &b, Binary::Add));
            }
            Op::Max(a) => {
                let a = h(a);
                let shape = self.shape(&a);
                let node_b = self.broadcast_as(node, &shape);
                let grad_b = self.broadcast_as(grad, &shape);
                let mask = self.cmp(&node_b, &a);
                let e = self.inner.borrow().nodes[grad.id].esize;
                let maskf = self.to_esize(&mask, e);
                drop(mask);
                let gm = self.binary(&maskf, &grad_b, Binary::Mul);
                drop(maskf);
                self.accumulate(g, &a, |s, sum| {
                    let shape = s.shape(sum);
                    let b = s.broadcast_as(&gm, &shape);
                    s.binary(sum, &b, Binary::Add)
                });
            }
            Op::Narrow(a, dim, start, len) => {
                let a = h(a);
                let dims = self.shape(&a);
                let e = self.inner.borrow().nodes[grad.id].esize;
                let left = (start > 0).then(|| {
                    let mut d = dims.clone();
                    d[dim] = start;
                    self.tensor(&d, e, false)
                });
                let right_len = dims[dim] - start - len;
                let right = (right_len > 0).then(|| {
                    let mut d = dims.clone();
                    d[dim] = right_len;
                    self.tensor(&d, e, false)
                });
                let arg_grad = match (&left, &right) {
                    (None, None) => grad.clone(),
                    (Some(l), None) => self.cat_h(&[l, grad], dim),
                    (None, Some(r)) => self.cat_h(&[grad, r], dim),
                    (Some(l), Some(r)) => self.cat_h(&[l, grad, r], dim),
                };
                drop(left);
                drop(right);
                self.accumulate(g, &a, |s, sum| s.binary(sum, &arg_grad, Binary::Add));
            }
            Op::Cat(args, dim) => {
                let mut start = 0;
                for a in args {
                    let a = h(a);
                    let len = self.shape(&a)[dim];
                    let arg_grad = self.narrow_h(grad, dim, start, len);
                    self.accumulate(g, &a, |s, sum| s.binary(sum, &arg_grad, Binary::Add));
                    start += len;
                }
            }
            Op::IndexSelect(a, _) | Op::Gather(a, _) => {
                let a = h(a);
                // index_add / scatter_add: a new tensor like the sum (the sum copied, the
                // gradient's rows added).
                self.accumulate(g, &a, |s, sum| {
                    let mut i = s.inner.borrow_mut();
                    let (shape, e) = (i.nodes[sum.id].shape.clone(), i.nodes[sum.id].esize);
                    let id = i.fresh(shape, e, Some(Op::Binary(sum.id, grad.id, Binary::Add)));
                    drop(i);
                    s.h(id)
                });
            }
            Op::Cmp(_) => {}
        }
    }

    /// candle-nn 0.11.1's `AdamW::step` for one parameter.
    fn adamw_var(&self, theta: &H, m: &H, v: &H, grad: &H) {
        let t1 = self.affine_h(m, 0.9);
        let t2 = self.affine_h(grad, 0.1);
        let next_m = self.binary(&t1, &t2, Binary::Add);
        drop((t1, t2));
        let t3 = self.affine_h(v, 0.999);
        let t4 = self.unary(grad, Unary::Sqr);
        let t5 = self.affine_h(&t4, 0.001);
        drop(t4);
        let next_v = self.binary(&t3, &t5, Binary::Add);
        drop((t3, t5));
        let m_hat = self.affine_h(&next_m, 10.);
        let v_hat = self.affine_h(&next_v, 1000.);
        let next_theta = self.affine_h(theta, 0.999);
        let adjusted = {
            let sq = self.unary(&v_hat, Unary::Sqrt);
            let plus = self.affine_h(&sq, 1.);
            drop(sq);
            let a = self.binary(&m_hat, &plus, Binary::Div);
            drop(plus);
            a
        };
        drop(m_hat);
        let lr = self.affine_h(&adjusted, 1e-5);
        drop(adjusted);
        let next_theta = self.binary(&next_theta, &lr, Binary::Sub);
        drop(lr);
        // m.set, v.set, theta.set copy in place.
        drop((next_theta, next_m, next_v, v_hat));
    }
}

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

/// Simulate two training steps (the first creates the optimizer's moments) of `batch x
/// context` tokens and return each phase's peak, as `bench --mode train` measures them.
pub fn estimate(
    spec: &ModelSpec,
    dtype: DType,
    cpu: bool,
    batch: u64,
    context: u64,
    lora: Option<&LoraSetup>,
) -> TrainPeaks {
    use super::train::Target;
    let e = dtype.size_in_bytes();
    let sim = Sim::new(cpu, e);
    let d = graph_dims(spec, batch, context);
    let (h, inter, vocab) = (
        spec.hidden_size as usize,
        spec.intermediate_size as usize,
        spec.vocab_size as usize,
    );
    let (q_w, kv_w) = (d.heads * d.head_dim, d.kv_heads * d.head_dim);
    let full = lora.is_none();
    let mut trainable: Vec<H> = Vec::new();
    let param = |shape: &[usize], trainable: &mut Vec<H>| {
        if full {
            let v = sim.var(shape);
            trainable.push(v.clone());
            v
        } else {
            sim.tensor(shape, e, false)
        }
    };
    let lin = |out: usize, inp: usize, t: Option<Target>, trainable: &mut Vec<H>| {
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
    let layers: Vec<Layer<H>> = (0..spec.num_layers)
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
    let trainable_params: u64 = trainable
        .iter()
        .map(|t| sim.shape(t).iter().product::<usize>() as u64)
        .sum();
    let weights = sim.live();

    let mut moments: Option<Vec<(H, H)>> = None;
    let mut peaks = [Parts::default(); 4];
    for step in 0..2 {
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
        let Ok(loss) = train_graph::loss(&sim, &params, &inputs, &d);
        let forward = sim.peak();
        sim.reset_peak();
        sim.tag(Part::BackwardBuffers);
        let mut grads = sim.backward(&loss);
        let backward = sim.peak();
        drop(loss);
        drop(inputs);
        // Only the parameters' gradients are kept for the step.
        let ids: Vec<usize> = trainable.iter().map(|t| t.id).collect();
        grads.map.retain(|k, _| ids.contains(k));
        sim.reset_peak();
        if moments.is_none() {
            sim.tag(Part::OptimizerStates);
            moments = Some(
                trainable
                    .iter()
                    .map(|t| {
                        // `Var::zeros`: the moments are variables too.
                        let s = sim.shape(t);
                        (sim.var(&s), sim.var(&s))
                    })
                    .collect(),
            );
        }
        sim.tag(Part::OptimizerTemporaries);
        if let Some(ms) = &moments {
            for (t, (m, v)) in trainable.iter().zip(ms) {
                if let Some(gr) = grads.map.get(&t.id) {
                    sim.adamw_var(t, m, v, gr);
                }
            }
        }
        let optimizer = sim.peak();
        drop(grads);
        if step == 0 {
            peaks[3] = optimizer;
        } else {
            peaks[0] = forward;
            peaks[1] = backward;
            peaks[2] = optimizer;
        }
    }
    debug_assert!(weights.total() > 0);
    TrainPeaks {
        forward: peaks[0],
        backward: peaks[1],
        optimizer: peaks[2],
        optimizer_first: peaks[3],
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
        let p = estimate(&s, DType::F32, true, 1, 128, None);
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
        let a = |b, c| estimate(&s, DType::F32, true, b, c, None);
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
        let p = estimate(&s, DType::F32, true, 1, 128, Some(&l));
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
        let p = estimate(&s, DType::BF16, false, 1, 512, None);
        let w = 16_060_522_496;
        let lm_head = 128_256 * 4096 * 2;
        assert_eq!(p.optimizer.total(), 4 * w + 14 * lm_head);
        assert!(p.backward.total() > 64_000_000_000 && p.backward.total() < 80_000_000_000);
        let long = estimate(&s, DType::BF16, false, 1, 1024, None);
        assert!(long.total_bytes() > 80_000_000_000);
    }
}
