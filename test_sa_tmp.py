"""Tests of --self-attention (issue 27, item 3), to be merged into test_all.py's dcgan_remedies
group: the block against a float64 loop over positions, its softmax, its start as the identity,
where the flag puts it, and a tiny end-to-end run with --spectral-norm, --ema and --loss hinge.

    python -m unittest test_sa_tmp.py
"""
import contextlib
import io
import os
import shutil
import tempfile
import unittest

import torch
import torch.nn as nn

import dcgan
import dcgan_remedies as rd
import runs
from test_all import OneThread, _dcgan_cfg, make_fake_cifar


def _sa_block(channels, gamma, seed=0, std=0.3):
    """A SelfAttention block with weights large enough that the attention is far from uniform."""
    torch.manual_seed(seed)
    block = rd.SelfAttention(channels)
    for conv in (block.f, block.g, block.h):
        nn.init.normal_(conv.weight, std=std)
    with torch.no_grad():
        block.gamma.fill_(gamma)
    return block


class TestSelfAttention(OneThread):
    def test_block_against_a_float64_loop_over_positions(self):
        # SAGAN sec. 3 written out position by position: s_ij = f(x_i)^T g(x_j),
        # beta_{j,i} = softmax over i, o_j = sum_i beta_{j,i} h(x_i), y_j = gamma o_j + x_j
        block = _sa_block(16, gamma=0.7).double()
        x = torch.randn(2, 16, 4, 5, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
        Wf, Wg, Wh = (c.weight[:, :, 0, 0] for c in (block.f, block.g, block.h))   # 1x1: matrices
        want = torch.empty_like(x)
        for b in range(2):
            pos = [x[b, :, r, c] for r in range(4) for c in range(5)]               # N = 20, row-major
            for j, xj in enumerate(pos):
                s = torch.stack([(Wf @ xi) @ (Wg @ xj) for xi in pos])              # (N,) over i
                beta = torch.exp(s - s.max()) / torch.exp(s - s.max()).sum()
                o = sum(beta[i] * (Wh @ xi) for i, xi in enumerate(pos))            # (C,)
                want[b, :, j // 5, j % 5] = block.gamma * o + xj           # gamma: 0.7 in float32
        got = block(x)
        self.assertEqual(got.shape, x.shape)
        torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-12)
        self.assertGreater((got - x).abs().max().item(), 0.1)      # the block did something

    def test_attention_weights_sum_to_one_over_positions(self):
        block = _sa_block(64, gamma=0.5)
        x = torch.randn(3, 64, 16, 16, generator=torch.Generator().manual_seed(2))
        beta = block.attention(x)                                   # (B, N, N), [:, j, i]
        self.assertEqual(tuple(beta.shape), (3, 256, 256))
        self.assertTrue(bool((beta >= 0).all()))
        torch.testing.assert_close(beta.sum(2), torch.ones(3, 256))
        self.assertGreater(beta.max().item(), 10 / 256)             # not the uniform map

    def test_gamma_zero_starts_as_the_plain_nets(self):
        # The flag adds the blocks after every other draw: G and D hold the plain run's weights,
        # and at gamma = 0 their outputs (train-mode BN, the probe's features) are the plain ones.
        for extra in ({}, dict(spectral_norm=True)):
            plain = rd.build_models(_dcgan_cfg(width=0.5, seed=3, **extra))
            sa = rd.build_models(_dcgan_cfg(width=0.5, seed=3, self_attention=True, **extra))
            for a, b in zip(plain, sa):
                sd = b.state_dict()
                for k, v in a.state_dict().items():
                    self.assertTrue(torch.equal(v, sd[k]), k)
                self.assertEqual(b.attention.gamma.item(), 0.0)
            z = torch.randn(8, dcgan.Z_DIM, generator=torch.Generator().manual_seed(4))
            x = torch.rand(8, 3, 32, 32, generator=torch.Generator().manual_seed(5)) * 2 - 1
            self.assertTrue(torch.equal(plain[0](z), sa[0](z)))
            self.assertTrue(torch.equal(plain[1](x), sa[1](x)))
            self.assertTrue(torch.equal(plain[1].features(x), sa[1].features(x)))
        block, y = _sa_block(64, gamma=0.0), torch.randn(2, 64, 16, 16)
        self.assertTrue(torch.equal(block(y), y))                   # any weights: gamma 0 is identity

    def test_flag_puts_one_block_at_16x16_in_G_and_D(self):
        G, D = rd.build_models(_dcgan_cfg(self_attention=True))
        seen = {}
        for name, net in (("G", G), ("D", D)):
            self.assertIsInstance(net.attention, rd.SelfAttention)
            self.assertEqual(sum(isinstance(m, rd.SelfAttention) for m in net.modules()), 1)
            net.attention.register_forward_hook(lambda m, i, o, n=name: seen.update({n: i[0].shape}))
        D(G(torch.randn(2, dcgan.Z_DIM)))
        self.assertEqual(seen, {"G": (2, 64, 16, 16), "D": (2, 64, 16, 16)})
        # per block: f, g 64 x 8, h 64 x 64 (no biases), gamma: 2 * 512 + 4096 + 1 = 5,121
        self.assertEqual(runs.count_params(G), 601_731 + 5_121)
        self.assertEqual(runs.count_params(D), 663_361 + 5_121)
        G0, D0 = rd.build_models(_dcgan_cfg())                     # off: the slots stay empty
        self.assertIsInstance(G0.attention, nn.Identity)
        self.assertIsInstance(D0.attention, nn.Identity)
        self.assertEqual((runs.count_params(G0), runs.count_params(D0)), (601_731, 663_361))
        _, D_sn = rd.build_models(_dcgan_cfg(self_attention=True, spectral_norm=True))
        for conv in (D_sn.attention.f, D_sn.attention.g, D_sn.attention.h):
            self.assertTrue(nn.utils.parametrize.is_parametrized(conv, "weight"))


class TestSelfAttentionRun(OneThread):
    """dcgan_remedies.main with --self-attention on the synthetic archive, with other remedies."""

    @classmethod
    def setUpClass(cls):
        super().setUpClass()
        cls.tmp = tempfile.mkdtemp(prefix="tests_sa_")
        cls.data_dir = os.path.join(cls.tmp, "data")
        make_fake_cifar(cls.data_dir, n_train_per_batch=20, n_test=20)

    @classmethod
    def tearDownClass(cls):
        shutil.rmtree(cls.tmp, ignore_errors=True)
        super().tearDownClass()

    def run_main(self, *extra):
        argv = ["--data-dir", self.data_dir, "--no-download", "--out", os.path.join(self.tmp, "sa"),
                "--subset", "100", "--batch-size", "32", "--width", "0.25", "--device", "cpu",
                "--no-probe", *extra]
        out = io.StringIO()
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(io.StringIO()):
            return rd.main(argv), out.getvalue()

    def test_composes_with_spectral_norm_ema_and_hinge(self):
        m, log = self.run_main("--epochs", "1", "--self-attention", "--spectral-norm", "--ema",
                               "0.9", "--loss", "hinge")
        self.assertIn("remedies: spectral norm, self attention, ema 0.9", log)
        self.assertTrue(m["config"]["self_attention"])
        ckpt = torch.load(os.path.join(self.tmp, "sa", "checkpoint.pt"), weights_only=True)
        self.assertTrue(ckpt["config"]["self_attention"])
        for net in ("G", "G_ema", "D"):
            self.assertIn("attention.gamma", ckpt[net])
            self.assertNotEqual(ckpt[net]["attention.gamma"].item(), 0.0)   # gamma was trained
        self.assertIn("attention.h.parametrizations.weight.original", ckpt["D"])  # SN on D's block
        self.assertIn("attention.h.weight", ckpt["G"])                            # none on G's
        plain_g = runs.count_params(rd.build_models(_dcgan_cfg(width=0.25))[0])
        self.assertEqual(m["params_g"] - plain_g, 2 * 16 * 2 + 16 * 16 + 1)  # 16 channels at 0.25
        # --resume refuses to continue it without the flag (RESUME_KEYS)
        with self.assertRaisesRegex(ValueError, "self_attention"):
            self.run_main("--epochs", "2", "--spectral-norm", "--ema", "0.9", "--loss", "hinge",
                          "--resume")


if __name__ == "__main__":
    unittest.main()
