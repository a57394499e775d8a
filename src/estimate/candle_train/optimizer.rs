//! candle-nn 0.11.1's `AdamW::step`, on the simulator: it computes on the `Var`s themselves,
//! so every temporary tracks and is kept by the next (about 14 tensors the size of the
//! parameter being updated at once).

use super::sim::{Binary, Sim, SimTensor, Unary};

impl Sim {
    /// candle-nn 0.11.1's `AdamW::step` for one parameter.
    pub(super) fn adamw_var(
        &self,
        theta: &SimTensor,
        m: &SimTensor,
        v: &SimTensor,
        grad: &SimTensor,
    ) {
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
