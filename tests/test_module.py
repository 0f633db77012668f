import math

import torch
import torch.nn.functional as F

from kogpt2_chatbot import backbone, data as chatdata, framing
from kogpt2_chatbot.module import KoGPT2Chat


def tiny_module(tiny_backbone, **hparams):
    model, tok = tiny_backbone
    return KoGPT2Chat(base_model="scratch-tiny", backbone=backbone.backbone_spec(model, tok), **hparams)


def test_loss_is_the_mean_over_answer_tokens(tiny_backbone):
    torch.manual_seed(0)
    module = tiny_module(tiny_backbone).eval()
    tok = module.tokenizer
    examples = [framing.example_ids(tok, "배고파", 0, "밥 드세요.", 64),
                framing.example_ids(tok, "헤어졌어 너무 힘들다", 1, "시간이 약이에요.", 64)]
    batch = chatdata.collate(examples, framing.control_ids(tok)["<pad>"])
    loss, count = module.answer_loss(batch["input_ids"], batch["labels"])

    # By hand: every answer token and </s>, predicted from the position before it, equally weighted.
    terms = []
    for ids, labels in examples:
        logits = module(torch.tensor([ids]))[0]
        for t in range(1, len(ids)):
            if labels[t] != framing.IGNORE_INDEX:
                terms.append(-F.log_softmax(logits[t - 1], -1)[labels[t]])
    assert count == len(terms) == sum(len(framing.text_ids(tok, a)) + 1 for a in ["밥 드세요.", "시간이 약이에요."])
    assert torch.allclose(loss, torch.stack(terms).mean(), atol=1e-5)
    # Hugging Face's own loss on the same batch agrees (padding carries -100).
    hf = module.kogpt2(input_ids=batch["input_ids"], labels=batch["labels"]).loss
    assert math.isclose(loss.item(), hf.item(), rel_tol=1e-5)


def test_optimizer_groups_and_schedule(tiny_backbone, monkeypatch):
    from types import SimpleNamespace

    module = tiny_module(tiny_backbone, lr=5e-5)
    monkeypatch.setattr(KoGPT2Chat, "trainer", property(lambda self: SimpleNamespace(estimated_stepping_batches=100)))
    config = module.configure_optimizers()
    opt, sched = config["optimizer"], config["lr_scheduler"]["scheduler"]
    decay, no_decay = opt.param_groups
    assert decay["weight_decay"] == 0.01 and no_decay["weight_decay"] == 0.0
    assert all(p.ndim >= 2 for p in decay["params"]) and all(p.ndim == 1 for p in no_decay["params"])
    assert opt.defaults["lr"] == 5e-5
    # Warm-up over the first 10% of steps, then a cosine down to zero.
    lrs = []
    for _ in range(100):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    assert lrs[0] == 0 and max(lrs) == lrs[10] == 5e-5 and lrs[55] < 3e-5 and lrs[-1] < 1e-7


def test_hyperparameters_are_plain(tiny_backbone):
    module = tiny_module(tiny_backbone, dropout=0.2)
    assert "backbone" not in module.hparams
    for value in module.hparams.values():
        assert value is None or isinstance(value, (str, int, float, bool))
    assert all(m.p == 0.2 for m in module.kogpt2.modules() if isinstance(m, torch.nn.Dropout))


def test_a_pretrained_backbone_trains_with_dropout_on(tiny_backbone, tmp_path):
    model, tok = tiny_backbone
    model.save_pretrained(tmp_path)
    tok.save_pretrained(tmp_path)
    module = KoGPT2Chat(base_model=str(tmp_path))  # from_pretrained() returns an eval-mode model
    assert module.training and all(m.training for m in module.kogpt2.modules())


def test_fused_optimizer_under_bf16_mixed_trains_and_clips(sample_csv, tmp_path, monkeypatch):
    # On a GPU, training uses a fused AdamW under bf16-mixed; Lightning's mixed-precision plugin
    # refuses to clip gradients for such an optimizer, which once stopped every GPU run at step one.
    # The same pairing on the CPU (fused AdamW runs there too) must train, with the norm clipped to 1.
    from kogpt2_chatbot.train import TrainConfig, train

    norms = []
    configure = KoGPT2Chat.configure_optimizers

    def spying(self):
        config = configure(self)

        def after_step(opt, args, kwargs):
            grads = [p.grad for group in opt.param_groups for p in group["params"] if p.grad is not None]
            norms.append(torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g) for g in grads])).item())
        config["optimizer"].register_step_post_hook(after_step)
        assert config["optimizer"].defaults["fused"]
        return config

    monkeypatch.setattr(KoGPT2Chat, "_fused_optimizer", lambda self: True)
    monkeypatch.setattr(KoGPT2Chat, "configure_optimizers", spying)
    train(TrainConfig(data=str(sample_csv), base_model="scratch-tiny", model_dir=str(tmp_path), max_steps=3,
                      batch_size=16, lr=3e-3, precision="bf16-mixed", samples=0, progress=False))
    assert len(norms) == 3 and max(norms) <= 1.0 + 1e-3
    assert (tmp_path / "model_-last.ckpt").exists()


def test_the_compiled_training_step_gives_the_same_losses(sample_csv, tmp_path):
    # --compile (on by default with CUDA): forward, answer-only loss and backward through
    # torch.compile. Forced on the CPU, 20 steps in fp32 must give today's losses, step by step.
    import pandas as pd

    from kogpt2_chatbot.train import TrainConfig, train

    losses = {}
    for compiled in (False, True):
        out = tmp_path / f"compiled-{compiled}"
        train(TrainConfig(data=str(sample_csv), base_model="scratch-tiny", model_dir=str(out), max_steps=20,
                          batch_size=8, max_len=16, lr=3e-3, dropout=0.0, log_every_n_steps=1, samples=0,
                          progress=False, compile=compiled))
        metrics = pd.read_csv(out / "metrics.csv")
        losses[compiled] = metrics["train_loss"].dropna().tolist()
    assert len(losses[False]) == 20
    assert max(abs(a - b) for a, b in zip(losses[False], losses[True], strict=True)) < 1e-5
    assert losses[True][-1] < losses[True][0] - 0.5  # and it learns


def test_a_compile_that_fails_on_the_first_step_is_one_line_and_training_goes_on(sample_csv, tmp_path, monkeypatch,
                                                                                   capsys):
    from kogpt2_chatbot.train import TrainConfig, train

    def unbuildable(model):
        def loss(input_ids, labels):
            raise RuntimeError("inductor: no C++ compiler found\nmore detail")
        return loss

    monkeypatch.setattr(backbone, "compiled_answer_loss", unbuildable)
    train(TrainConfig(data=str(sample_csv), base_model="scratch-tiny", model_dir=str(tmp_path), max_steps=3,
                      batch_size=16, samples=0, progress=False, compile=True))
    err = [line for line in capsys.readouterr().err.splitlines() if "--compile" in line]
    assert err == ["[train] --compile: RuntimeError: inductor: no C++ compiler found; training without it "
                   "(--no-compile)"]
    assert torch.load(tmp_path / "model_-last.ckpt", weights_only=True)["global_step"] == 3
