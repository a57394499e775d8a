//! candle-core 0.11.1's `Tensor::backward` (`backprop.rs`), transcribed rule by rule onto
//! the simulator. The one long match mirrors upstream's, so that each arm can be checked
//! against its original.

use super::sim::{Binary, Op, Sim, SimTensor, Unary};
use super::Part;
use std::collections::HashMap;

/// candle's `GradStore`, on simulated tensors.
pub(super) struct Grads {
    pub(super) map: HashMap<usize, SimTensor>,
}

impl Sim {
    /// `grads.or_insert(arg)`, then `*sum = f(sum)`. Gradients of `Var`s are re-tagged.
    fn accumulate(
        &self,
        g: &mut Grads,
        arg: &SimTensor,
        f: impl FnOnce(&Sim, &SimTensor) -> SimTensor,
    ) {
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
    pub(super) fn backward(&self, loss: &SimTensor) -> Grads {
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

    fn rule(&self, g: &mut Grads, node: &SimTensor, op: Op, grad: &SimTensor) {
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
}
