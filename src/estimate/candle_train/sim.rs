//! The simulator: candle 0.11's tensors on shapes alone. Every [`SimTensor`] is a counted
//! reference to a node with a shape, strides, a storage and (when it tracks gradients) the
//! op and inputs it came from, as candle's `Tensor_` holds `Arc`s; a storage's bytes count
//! while anything refers to it. `impl Ops for Sim` lets the generic training graph
//! ([`super::super::train_graph`]) run on it exactly as on candle.

use super::{Part, Parts};
use std::cell::RefCell;
use std::collections::HashMap;
use std::convert::Infallible;
use std::rc::Rc;

#[derive(Debug, Clone, Copy, PartialEq)]
pub(super) enum Unary {
    Sqr,
    Sqrt,
    Exp,
    Log,
    Neg,
    Silu,
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub(super) enum Binary {
    Add,
    Sub,
    Mul,
    Div,
}

#[derive(Debug, Clone)]
pub(super) enum Op {
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
    pub(super) fn inputs(&self) -> Vec<usize> {
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

pub(super) struct Node {
    pub(super) shape: Vec<usize>,
    pub(super) stride: Vec<usize>,
    /// Bytes per element.
    pub(super) esize: u64,
    pub(super) int: bool,
    pub(super) storage: usize,
    pub(super) op: Option<Op>,
    pub(super) var: bool,
    pub(super) refs: usize,
}

pub(super) struct Storage {
    pub(super) bytes: u64,
    pub(super) refs: usize,
    pub(super) part: Part,
}

pub(super) struct Inner {
    pub(super) nodes: Vec<Node>,
    pub(super) storages: Vec<Storage>,
    pub(super) live: Parts,
    pub(super) peak: Parts,
    pub(super) tag: Part,
    pub(super) cpu: bool,
    pub(super) model_esize: u64,
}

pub(super) fn contiguous_strides(shape: &[usize]) -> Vec<usize> {
    let mut stride = vec![1; shape.len()];
    for i in (0..shape.len().saturating_sub(1)).rev() {
        stride[i] = stride[i + 1] * shape[i + 1];
    }
    stride
}

/// candle's `Shape::is_contiguous`: dimensions of size 1 do not count.
pub(super) fn is_contiguous(shape: &[usize], stride: &[usize]) -> bool {
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
pub(super) const GEMM_KC: u64 = 256;
pub(super) const GEMM_MR: u64 = 16;
pub(super) const GEMM_PREPACK_MAX: u64 = 4096;

impl Inner {
    pub(super) fn alloc(&mut self, bytes: u64) -> usize {
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

    pub(super) fn release_storage(&mut self, s: usize) {
        let st = &mut self.storages[s];
        st.refs -= 1;
        if st.refs == 0 {
            let (part, bytes) = (st.part, st.bytes);
            self.live.0[part as usize] -= bytes;
        }
    }

    pub(super) fn tracks(&self, id: usize) -> bool {
        self.nodes[id].var || self.nodes[id].op.is_some()
    }

    pub(super) fn release(&mut self, id: usize) {
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
    pub(super) fn node(
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
    pub(super) fn fresh(&mut self, shape: Vec<usize>, esize: u64, op: Option<Op>) -> usize {
        let n: usize = shape.iter().product();
        let storage = self.alloc(n as u64 * esize);
        let stride = contiguous_strides(&shape);
        self.node(shape, stride, esize, storage, op)
    }

    /// A view of `src`'s storage.
    pub(super) fn view(
        &mut self,
        src: usize,
        shape: Vec<usize>,
        stride: Vec<usize>,
        op: Op,
    ) -> usize {
        let (storage, esize) = (self.nodes[src].storage, self.nodes[src].esize);
        self.storages[storage].refs += 1;
        self.node(shape, stride, esize, storage, Some(op))
    }
}

/// A tensor of the simulation: a counted reference to a node, like candle's `Tensor`.
pub struct SimTensor {
    pub(super) id: usize,
    pub(super) sim: Rc<RefCell<Inner>>,
}

impl Clone for SimTensor {
    fn clone(&self) -> Self {
        self.sim.borrow_mut().nodes[self.id].refs += 1;
        SimTensor {
            id: self.id,
            sim: self.sim.clone(),
        }
    }
}

impl Drop for SimTensor {
    fn drop(&mut self) {
        self.sim.borrow_mut().release(self.id);
    }
}

/// The simulator: candle's tensor semantics on shapes.
pub struct Sim {
    pub(super) inner: Rc<RefCell<Inner>>,
}

pub(super) type SimResult = Result<SimTensor, Infallible>;

impl Sim {
    pub(super) fn new(cpu: bool, model_esize: u64) -> Self {
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

    pub(super) fn h(&self, id: usize) -> SimTensor {
        SimTensor {
            id,
            sim: self.inner.clone(),
        }
    }

    /// Another reference to node `id` (which must be alive).
    pub(super) fn handle(&self, id: usize) -> SimTensor {
        self.inner.borrow_mut().nodes[id].refs += 1;
        self.h(id)
    }

    pub(super) fn tag(&self, p: Part) {
        self.inner.borrow_mut().tag = p;
    }

    pub(super) fn reset_peak(&self) {
        let mut s = self.inner.borrow_mut();
        s.peak = s.live;
    }

    pub(super) fn peak(&self) -> Parts {
        self.inner.borrow().peak
    }

    pub(super) fn shape(&self, x: &SimTensor) -> Vec<usize> {
        self.inner.borrow().nodes[x.id].shape.clone()
    }

    pub(super) fn tensor(&self, shape: &[usize], esize: u64, int: bool) -> SimTensor {
        let mut s = self.inner.borrow_mut();
        let id = s.fresh(shape.to_vec(), esize, None);
        s.nodes[id].int = int;
        drop(s);
        self.h(id)
    }

    pub(super) fn var(&self, shape: &[usize]) -> SimTensor {
        let e = self.inner.borrow().model_esize;
        let v = self.tensor(shape, e, false);
        self.inner.borrow_mut().nodes[v.id].var = true;
        v
    }

    pub(super) fn zeros_like(&self, x: &SimTensor) -> SimTensor {
        let (shape, e) = {
            let s = self.inner.borrow();
            (s.nodes[x.id].shape.clone(), s.nodes[x.id].esize)
        };
        self.tensor(&shape, e, false)
    }

    pub(super) fn detach(&self, x: &SimTensor) -> SimTensor {
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

    pub(super) fn broadcast_as(&self, x: &SimTensor, shape: &[usize]) -> SimTensor {
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

    pub(super) fn unary(&self, x: &SimTensor, u: Unary) -> SimTensor {
        let mut s = self.inner.borrow_mut();
        let (shape, e) = (s.nodes[x.id].shape.clone(), s.nodes[x.id].esize);
        let id = s.fresh(shape, e, Some(Op::Unary(x.id, u)));
        drop(s);
        self.h(id)
    }

    pub(super) fn cmp(&self, a: &SimTensor, b: &SimTensor) -> SimTensor {
        // candle's cmp broadcasts nothing here (same shapes); u8 result.
        let _ = b;
        let mut s = self.inner.borrow_mut();
        let shape = s.nodes[a.id].shape.clone();
        let id = s.fresh(shape, 1, Some(Op::Cmp(a.id)));
        drop(s);
        self.h(id)
    }

    /// Cast to `esize` bytes per element (`to_dtype`).
    pub(super) fn to_esize(&self, x: &SimTensor, esize: u64) -> SimTensor {
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

    pub(super) fn binary(&self, a: &SimTensor, b: &SimTensor, op: Binary) -> SimTensor {
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

    pub(super) fn sum_keepdims(&self, x: &SimTensor, dims: &[usize]) -> SimTensor {
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

    pub(super) fn transpose_h(&self, x: &SimTensor, d1: usize, d2: usize) -> SimTensor {
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

    pub(super) fn t(&self, x: &SimTensor) -> SimTensor {
        let r = self.shape(x).len();
        self.transpose_h(x, r - 2, r - 1)
    }

    pub(super) fn reshape_h(&self, x: &SimTensor, shape: &[usize]) -> SimTensor {
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

    pub(super) fn matmul_h(&self, a: &SimTensor, b: &SimTensor) -> SimTensor {
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

    pub(super) fn affine_h(&self, x: &SimTensor, mul: f64) -> SimTensor {
        let mut s = self.inner.borrow_mut();
        let (shape, e) = (s.nodes[x.id].shape.clone(), s.nodes[x.id].esize);
        let id = s.fresh(shape, e, Some(Op::Affine(x.id, mul)));
        drop(s);
        self.h(id)
    }

    pub(super) fn narrow_h(
        &self,
        x: &SimTensor,
        dim: usize,
        start: usize,
        len: usize,
    ) -> SimTensor {
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

    pub(super) fn cat_h(&self, xs: &[&SimTensor], dim: usize) -> SimTensor {
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

    pub(super) fn op_of(&self, id: usize) -> Option<Op> {
        self.inner.borrow().nodes[id].op.clone()
    }

    /// candle's `sorted_nodes`: the nodes that lead to `root` and track gradients, root first.
    pub(super) fn sorted_nodes(&self, root: usize) -> Vec<usize> {
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
