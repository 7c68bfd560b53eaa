"""Tiny random-init models from Hugging Face transformers, timm and torchvision (docs/zoo.md).

Each entry is a :class:`Spec`: how to build the model (random initialisation from a config, never
downloaded weights), one fixed batch of inputs with fixed random targets, and the qualified name of
its output layer(s).  The models are in training mode with every dropout probability at 0, so a
forward pass is deterministic.  Word embeddings are untied (``tie_word_embeddings=False``) except
in the tied-weights test.  Sizes are tiny: hidden 32, 2 layers, vocabulary 100, images 32x32 or
smaller, batch 2.

The test modules (``test_zoo_*.py``) and ``scripts/zoo_table.py`` read the same specs.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable

import torch
import torch.nn as nn

BATCH = 2
SEQ = 8
VOCAB = 100
LABELS = 3
IMAGE = 32
CLASSES = 10


@dataclasses.dataclass(frozen=True)
class Spec:
    """One model of the zoo."""

    name: str                      # test id, e.g. "hf-bert"
    library: str                   # "transformers", "timm" or "torchvision" (the module importorskip'd)
    build: Callable[[], nn.Module]
    kind: str                      # "cls" (sequence classification), "lm" (per-token logits), "s2s", "image"
    head: tuple[str, ...]          # the output layer's qualified module name(s)
    image: int = IMAGE             # image side for kind="image"
    classes: int = CLASSES
    note: str = ""                 # what the docs table says about the model
    tier: str = "core"             # "core": every check; "builder": a torchvision builder as it ships, lighter checks
    grad_dtype: torch.dtype = torch.float64   # the gradient checks' precision (training runs in float32)
    optimizer: str = "adam"        # the training check's: "adam" (lr 1e-3) or "sgd" (lr 0.01, momentum 0.9)


def build(spec: Spec) -> nn.Module:
    """``spec``'s model, with a zero-initialised output layer re-drawn (normal, std 0.02).

    torchvision's ViT and timm's MLP-Mixer / ResMLP start with a zero head, so every hidden gradient is
    0 at the first step under bp (and under usf, whose feedback sign(0) * c sends c * sum(T - O) = 0):
    nothing to compare.  The zoo wants a first step with a signal in every layer.
    """
    torch.manual_seed(0)
    model = spec.build()
    g = torch.Generator().manual_seed(99)
    for h in spec.head:
        w = model.get_submodule(h).weight
        if not w.detach().any():
            with torch.no_grad():
                w.copy_(torch.randn(w.shape, generator=g) * 0.02)
    return model


# ---------------------------------------------------------------------------------------------- inputs

def example(spec: Spec, dtype=torch.float32):
    """The fixed batch of ``spec``: (kwargs of the forward call, targets of the loss)."""
    g = torch.Generator().manual_seed(1234)
    if spec.kind == "image":
        x = torch.randn(BATCH, 3, spec.image, spec.image, generator=g, dtype=dtype)
        y = torch.randint(0, spec.classes, (BATCH,), generator=g)
        return ({"pixel_values": x} if spec.library == "transformers" else {"x": x}), y
    ids = torch.randint(0, VOCAB, (BATCH, SEQ), generator=g)
    if spec.kind == "cls":
        return {"input_ids": ids}, torch.randint(0, LABELS, (BATCH,), generator=g)
    if spec.kind == "lm":
        return {"input_ids": ids}, torch.randint(0, VOCAB, (BATCH, SEQ), generator=g)
    if spec.kind == "s2s":
        dec = torch.randint(0, VOCAB, (BATCH, SEQ // 2), generator=g)
        return {"input_ids": ids, "decoder_input_ids": dec}, torch.randint(0, VOCAB, (BATCH, SEQ // 2), generator=g)
    raise ValueError(spec.kind)


def logits(model, inputs):
    """The model's logits for ``inputs`` (the forward call of every library)."""
    if "x" in inputs:
        out = model(inputs["x"])
    else:
        out = model(**inputs)
    out = getattr(out, "logits", out)
    if isinstance(out, (tuple, list)):      # e.g. torchvision's GoogLeNet outputs in training mode
        out = out[0]
    return out


def loss_of(model, inputs, targets):
    out = logits(model, inputs)
    return torch.nn.functional.cross_entropy(out.reshape(-1, out.shape[-1]), targets.reshape(-1))


def cast_inputs(inputs, dtype):
    return {k: (v.to(dtype) if v.is_floating_point() else v) for k, v in inputs.items()}


def no_dropout(model: nn.Module) -> nn.Module:
    """Every dropout / stochastic-depth probability in ``model`` set to 0 (deterministic forward)."""
    for m in model.modules():
        name = type(m).__name__.lower()
        if ("dropout" in name or "droppath" in name or "stochasticdepth" in name) and isinstance(
                getattr(m, "p", None), float):
            m.p = 0.0
        if "droppath" in name and isinstance(getattr(m, "drop_prob", None), float):
            m.drop_prob = 0.0
    return model


# ------------------------------------------------------------------------------------ Hugging Face

HF_SMALL = dict(vocab_size=VOCAB, hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=37,
                max_position_embeddings=64, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0,
                tie_word_embeddings=False)
DECODER_SMALL = dict(vocab_size=VOCAB, hidden_size=32, intermediate_size=48, num_hidden_layers=2,
                     num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64,
                     tie_word_embeddings=False, attention_dropout=0.0, pad_token_id=0)
VISION_SMALL = dict(image_size=IMAGE, patch_size=8, num_channels=3, hidden_size=32, num_hidden_layers=2,
                    num_attention_heads=2, intermediate_size=37, hidden_dropout_prob=0.0,
                    attention_probs_dropout_prob=0.0, num_labels=CLASSES)


def _hf(model_cls: str, config_cls: str, **kw):
    def build():
        import transformers
        config = getattr(transformers, config_cls)(**kw)
        config._attn_implementation = "eager"
        torch.manual_seed(0)
        return no_dropout(getattr(transformers, model_cls)(config))
    return build


def _hf_spec(name, model_cls, config_cls, kind, head, note="", **kw):
    if kind == "cls":
        kw.setdefault("num_labels", LABELS)
    return Spec(f"hf-{name}", "transformers", _hf(model_cls, config_cls, **kw), kind, head, note=note)


HF = [
    _hf_spec("bert", "BertForSequenceClassification", "BertConfig", "cls", ("classifier",), **HF_SMALL,
             note="pooler (Linear + tanh) below the classifier"),
    _hf_spec("distilbert", "DistilBertForSequenceClassification", "DistilBertConfig", "cls", ("classifier",),
             vocab_size=VOCAB, dim=32, n_layers=2, n_heads=2, hidden_dim=37, max_position_embeddings=64,
             dropout=0.0, attention_dropout=0.0, seq_classif_dropout=0.0, tie_word_embeddings=False),
    _hf_spec("roberta", "RobertaForSequenceClassification", "RobertaConfig", "cls", ("classifier.out_proj",),
             **{**HF_SMALL, "pad_token_id": 1}),
    _hf_spec("albert", "AlbertForSequenceClassification", "AlbertConfig", "cls", ("classifier",),
             **{**HF_SMALL, "embedding_size": 16, "classifier_dropout_prob": 0.0},
             note="one layer's weights shared by both layers (a site applied twice)"),
    _hf_spec("electra", "ElectraForSequenceClassification", "ElectraConfig", "cls", ("classifier.out_proj",),
             **{**HF_SMALL, "embedding_size": 16}),
    _hf_spec("mobilebert", "MobileBertForSequenceClassification", "MobileBertConfig", "cls", ("classifier",),
             **{**HF_SMALL, "embedding_size": 16, "intra_bottleneck_size": 16, "true_hidden_size": 16,
                "num_feedforward_networks": 2},
             note="NoNorm (elementwise affine) and bottlenecks"),
    _hf_spec("gpt2", "GPT2LMHeadModel", "GPT2Config", "lm", ("lm_head",),
             vocab_size=VOCAB, n_embd=32, n_layer=2, n_head=2, n_positions=64, resid_pdrop=0.0, embd_pdrop=0.0,
             attn_pdrop=0.0, tie_word_embeddings=False, bos_token_id=0, eos_token_id=0,
             note="transformers' Conv1D projections"),
    _hf_spec("gpt-neo", "GPTNeoForCausalLM", "GPTNeoConfig", "lm", ("lm_head",),
             vocab_size=VOCAB, hidden_size=32, num_layers=2, num_heads=2, attention_types=[[["global", "local"], 1]],
             window_size=4, max_position_embeddings=64, intermediate_size=37, resid_dropout=0.0, embed_dropout=0.0,
             bos_token_id=0, eos_token_id=0,
             attention_dropout=0.0, tie_word_embeddings=False),
    _hf_spec("opt", "OPTForCausalLM", "OPTConfig", "lm", ("lm_head",),
             vocab_size=VOCAB, hidden_size=32, num_hidden_layers=2, num_attention_heads=2, ffn_dim=37,
             max_position_embeddings=64, word_embed_proj_dim=32, dropout=0.0, attention_dropout=0.0,
             tie_word_embeddings=False, pad_token_id=1),
    _hf_spec("llama", "LlamaForCausalLM", "LlamaConfig", "lm", ("lm_head",), **DECODER_SMALL,
             note="RMSNorm, rotary embeddings, grouped-query attention, SwiGLU"),
    _hf_spec("mistral", "MistralForCausalLM", "MistralConfig", "lm", ("lm_head",), **DECODER_SMALL,
             sliding_window=4),
    _hf_spec("qwen2", "Qwen2ForCausalLM", "Qwen2Config", "lm", ("lm_head",), **DECODER_SMALL),
    _hf_spec("gemma", "GemmaForCausalLM", "GemmaConfig", "lm", ("lm_head",), **DECODER_SMALL, head_dim=8),
    _hf_spec("phi", "PhiForCausalLM", "PhiConfig", "lm", ("lm_head",), **{**DECODER_SMALL, "resid_pdrop": 0.0,
                                                                          "embd_pdrop": 0.0}),
    _hf_spec("t5", "T5ForConditionalGeneration", "T5Config", "s2s", ("lm_head",),
             vocab_size=VOCAB, d_model=32, d_kv=8, d_ff=37, num_layers=2, num_decoder_layers=2, num_heads=4,
             dropout_rate=0.0, decoder_start_token_id=0, pad_token_id=0,
             note="encoder-decoder, relative position bias; lm_head tied to the shared embedding (transformers 5 "
                  "always ties T5's)"),
    _hf_spec("bart", "BartForConditionalGeneration", "BartConfig", "s2s", ("lm_head",),
             vocab_size=VOCAB, d_model=32, encoder_layers=2, decoder_layers=2, encoder_attention_heads=2,
             decoder_attention_heads=2, encoder_ffn_dim=37, decoder_ffn_dim=37, max_position_embeddings=64,
             dropout=0.0, attention_dropout=0.0, activation_dropout=0.0, tie_word_embeddings=False,
             note="final_logits_bias buffer after lm_head"),
    _hf_spec("vit", "ViTForImageClassification", "ViTConfig", "image", ("classifier",), **VISION_SMALL,
             note="cls token, position embeddings (structural parameters)"),
    _hf_spec("deit", "DeiTForImageClassification", "DeiTConfig", "image", ("classifier",), **VISION_SMALL),
    _hf_spec("swin", "SwinForImageClassification", "SwinConfig", "image", ("classifier",),
             image_size=IMAGE, patch_size=4, embed_dim=16, depths=[1, 1], num_heads=[2, 2], window_size=2,
             hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0, drop_path_rate=0.0, num_labels=CLASSES),
    _hf_spec("convnext", "ConvNextForImageClassification", "ConvNextConfig", "image", ("classifier",),
             hidden_sizes=[16, 32], depths=[1, 1], num_stages=2, drop_path_rate=0.0, num_labels=CLASSES,
             note="layer scale, LayerNorm over channels"),
    _hf_spec("resnet", "ResNetForImageClassification", "ResNetConfig", "image", ("classifier.1",),
             embedding_size=8, hidden_sizes=[8, 16], depths=[1, 1], layer_type="basic", num_labels=CLASSES),
]
# the image models' spec.kind is "image" with the library's "pixel_values" argument
HF = [dataclasses.replace(s, classes=CLASSES) if s.kind == "image" else s for s in HF]


# ------------------------------------------------------------------------------------------- timm

def _timm(name, **kw):
    def build():
        import timm
        torch.manual_seed(0)
        return no_dropout(timm.create_model(name, pretrained=False, num_classes=CLASSES, **kw))
    return build


def _timm_class(module, cls, layers=(), **kw):
    """A timm model class at a tiny config (the builders of these fix the sizes in a dict that kwargs cannot
    override); ``layers`` names keyword arguments whose values are attributes of the timm module."""
    import importlib
    mod = importlib.import_module(f"timm.models.{module}")
    kw.update({k: getattr(mod, v) for k, v in dict(layers).items()})
    torch.manual_seed(0)
    return no_dropout(getattr(mod, cls)(num_classes=CLASSES, **kw))


def _timm_gen(module, gen, variant, **kw):
    """A timm generator function (what the named builder calls) at smaller multipliers than the builder fixes."""
    import importlib
    torch.manual_seed(0)
    mod = importlib.import_module(f"timm.models.{module}")
    return no_dropout(getattr(mod, gen)(variant, pretrained=False, num_classes=CLASSES, **kw))


def _timm_blocks(module, cls):
    """timm's MobileNetV3 / EfficientNet class on a three-block architecture string (the builders fix 11-16)."""
    import importlib
    from functools import partial
    from timm.models._efficientnet_builder import decode_arch_def, round_channels
    from timm.models._efficientnet_blocks import SqueezeExcite
    torch.manual_seed(0)
    mod = importlib.import_module(f"timm.models.{module}")
    if cls == "MobileNetV3":
        arch = [["ds_r1_k3_s2_e1_c8_se0.25_nre"], ["ir_r1_k3_s2_e4.5_c16_nre"], ["ir_r1_k5_s2_e4_c24_se0.25"]]
        se = partial(SqueezeExcite, gate_layer="hard_sigmoid", force_act_layer=nn.ReLU, rd_round_fn=round_channels)
        kw = dict(act_layer=nn.Hardswish, se_layer=se, num_features=64)
    else:
        arch = [["ds_r1_k3_s1_e1_c8_se0.25"], ["ir_r1_k3_s2_e6_c16_se0.25"], ["ir_r1_k5_s2_e6_c24_se0.25"]]
        kw = dict(act_layer=nn.SiLU, num_features=64)
    model = getattr(mod, cls)(decode_arch_def(arch), num_classes=CLASSES, stem_size=8, **kw)
    return no_dropout(model)


def _regnet_cfg():
    from timm.models.regnet import RegNetCfg
    return RegNetCfg(depth=4, w0=8, wa=16, wm=1.5, group_size=8, stem_width=8)


MIXER = dict(img_size=IMAGE, patch_size=8, num_blocks=2, embed_dim=32)


def _timm_spec(name, model, head, image=IMAGE, note="", **kw):
    return Spec(f"timm-{name}", "timm", _timm(model, **kw), "image", head, image=image, note=note)


TIMM = [
    _timm_spec("resnet18", "resnet18", ("fc",), layers=[1, 1, 1, 1], channels=(8, 16, 32, 64), stem_width=8,
               note="layers=[1,1,1,1], channels 8-64"),
    _timm_spec("vit_tiny", "vit_tiny_patch16_224", ("head",), img_size=IMAGE, patch_size=8, depth=2, embed_dim=32,
               num_heads=2, note="img_size=32, patch 8, depth 2, width 32"),
    _timm_spec("deit_tiny", "deit_tiny_patch16_224", ("head",), img_size=IMAGE, patch_size=8, depth=2,
               embed_dim=32, num_heads=2, note="img_size=32, patch 8, depth 2, width 32"),
    _timm_spec("convnext_atto", "convnext_atto", ("head.fc",), depths=(1, 1, 1, 1), dims=(8, 16, 24, 32),
               note="depths (1, 1, 1, 1), dims 8-32; layer scale (gamma)"),
    Spec("timm-mobilenetv3", "timm", lambda: _timm_blocks("mobilenetv3", "MobileNetV3"), "image", ("classifier",),
         note="timm's MobileNetV3 class with mobilenetv3_small's block kinds (depthwise-separable, inverted residual, "
              "squeeze-excite with hard-sigmoid, hard-swish), 3 blocks at 8-24 channels; its classifier is timm's "
              "own Linear"),
    Spec("timm-efficientnet", "timm", lambda: _timm_blocks("efficientnet", "EfficientNet"), "image", ("classifier",),
         note="timm's EfficientNet class with efficientnet_b0's first three stages (one block each, 8-24 channels, "
              "squeeze-excite, swish)"),
    Spec("timm-regnet", "timm", lambda: _timm_class("regnet", "RegNet", cfg=_regnet_cfg()), "image", ("head.fc",),
         note="RegNet(RegNetCfg(depth=4, w0=8, wa=16, wm=1.5, group_size=8)): grouped convs"),
    Spec("timm-resmlp", "timm", lambda: _timm_class("mlp_mixer", "MlpMixer", {"block_layer": "ResBlock",
                                                    "norm_layer": "Affine"}, mlp_ratio=4, **MIXER), "image", ("head",),
         note="timm's MlpMixer class as resmlp_12_224 builds it (ResBlock, Affine norms, layer scale) at "
              "img_size=32, patch 8, 2 blocks, width 32"),
    Spec("timm-mixer", "timm", lambda: _timm_class("mlp_mixer", "MlpMixer", **MIXER), "image", ("head",),
         note="timm's MlpMixer (token-mixing MLPs) at img_size=32, patch 8, 2 blocks, width 32"),
    _timm_spec("cait", "cait_xxs24_224", ("head",), img_size=IMAGE, patch_size=8, depth=2, embed_dim=32,
               num_heads=2, note="class-attention blocks, layer scale; img_size=32, depth 2, width 32"),
    Spec("timm-poolformer", "timm",
         lambda: _timm_class("metaformer", "MetaFormer", {"norm_layers": "GroupNorm1"}, depths=(1, 1, 1, 1),
                             dims=(8, 16, 24, 32), downsample_norm=None, mlp_act=nn.GELU, mlp_bias=True,
                             layer_scale_init_values=1e-5, res_scale_init_values=None, use_mlp_head=False),
         "image", ("head.fc",), note="timm's MetaFormer as poolformer_s12 builds it (pooling token mixer, "
                                     "GroupNorm1, layer scale) with 1 block per stage, dims 8-32"),
    _timm_spec("swin", "swin_tiny_patch4_window7_224", ("head.fc",), img_size=IMAGE, patch_size=4, window_size=2,
               embed_dim=16, depths=(1, 1), num_heads=(2, 2), note="img_size=32, window 2, depths (1, 1)"),
]


# ------------------------------------------------------------------------------------ torchvision

# The torchvision classification builders, all of them (torchvision.models.list_models(module=
# torchvision.models) in 0.29.1).  Each builder is built as it ships (weights=None, num_classes=10)
# where it takes a 32x32 image and is small; the rest are listed in TV_SKIPPED with the reason.
TV_HEADS = {
    "convnext": "classifier.2", "densenet": "classifier", "efficientnet": "classifier.1", "googlenet": "fc",
    "mnasnet": "classifier.1", "mobilenet_v2": "classifier.1", "mobilenet_v3": "classifier.3",
    "regnet": "fc", "resnet": "fc", "resnext": "fc", "wide_resnet": "fc", "shufflenet": "fc",
    "squeezenet": "classifier.1", "swin": "head", "vit": "heads.head", "alexnet": "classifier.6",
    "vgg": "classifier.6", "inception": "fc", "maxvit": "classifier.5",
}
TV_MAX_PARAMS = 30e6
TV_SKIPPED = {
    "alexnet": "57M parameters (a 9216x4096 classifier fixed by the builder), and it needs images of at least "
               "63x63; its layers (Conv2d, ReLU, MaxPool2d, Dropout, Linear) are all covered by the others",
    "inception_v3": "needs images of at least 75x75 (its stem and the reduction blocks' 3x3 kernels run out of "
                    "pixels at 32 and 64)",
    "maxvit_t": "its window partition needs the image side to be a multiple of 224's grid (7x7 windows at every "
                "stage): 32x32 and 64x64 fail inside torchvision",
    "vit_h_14": "632M parameters; image_size=32 is not a multiple of its 14-pixel patches",
}
for _n in ("vgg11", "vgg11_bn", "vgg13", "vgg13_bn", "vgg16", "vgg16_bn", "vgg19", "vgg19_bn"):
    TV_SKIPPED[_n] = "129-140M parameters: the builder fixes a 25088x4096 classifier; VGG's layers are covered by " \
                     "the others"
for _n in ("vit_b_16", "vit_b_32", "vit_l_16", "vit_l_32"):
    TV_SKIPPED[_n] = "86-306M parameters at width 768/1024; the family is tested through torchvision's own " \
                     "VisionTransformer class at a tiny config (tv-vit-tiny)"


# Builders past TV_MAX_PARAMS at 10 classes (as measured with torchvision 0.29.1): the same module classes as
# their smaller siblings, at sizes that would cost more CPU than the whole rest of the zoo.
TV_BIG = {"convnext_small": 49.5, "convnext_base": 87.6, "convnext_large": 196.2, "efficientnet_b6": 40.8,
          "efficientnet_b7": 63.8, "efficientnet_v2_m": 52.9, "efficientnet_v2_l": 117.2, "regnet_x_8gf": 37.7,
          "regnet_x_16gf": 52.3, "regnet_x_32gf": 105.3, "regnet_y_8gf": 37.4, "regnet_y_16gf": 80.6,
          "regnet_y_32gf": 141.4, "regnet_y_128gf": 637.5, "resnet101": 42.5, "resnet152": 58.2,
          "resnext101_32x8d": 86.8, "resnext101_64x4d": 81.4, "swin_s": 48.8, "swin_b": 86.8, "swin_v2_s": 49.0,
          "swin_v2_b": 86.9, "wide_resnet50_2": 66.9, "wide_resnet101_2": 124.9}
for _n, _m in TV_BIG.items():
    TV_SKIPPED[_n] = f"{_m:g}M parameters (over {TV_MAX_PARAMS / 1e6:g}M): the same classes as its family's " \
                     "smaller builders, tested"
# Builders between TV_DEFAULT_PARAMS and TV_MAX_PARAMS: 2-5 s of CPU each; in the zoo with RBP_ZOO_BUILDERS=all
TV_DEFAULT_PARAMS = 12e6
TV_SLOW = {"convnext_tiny": 27.8, "densenet161": 26.5, "densenet169": 12.5, "densenet201": 18.1,
           "efficientnet_b4": 17.6, "efficientnet_b5": 28.4, "efficientnet_v2_s": 20.2, "regnet_x_3_2gf": 14.3, "regnet_y_3_2gf": 17.9,
           "resnet34": 21.3, "resnet50": 23.5, "resnext50_32x4d": 23.0, "swin_t": 27.5, "swin_v2_t": 27.6}


def _tv_family(name):
    for prefix in sorted(TV_HEADS, key=len, reverse=True):
        if name.startswith(prefix):
            return prefix
    raise KeyError(name)


def _tv(name):
    def build():
        import torchvision.models as M
        torch.manual_seed(0)
        kw = {"aux_logits": False, "init_weights": True} if name == "googlenet" else {}
        return no_dropout(M.get_model(name, weights=None, num_classes=CLASSES, **kw))
    return build


def _tv_classes():
    """torchvision's model classes at tiny configs: name -> builder (the heads and notes: TV_CLASSES)."""
    import torchvision.models as M
    from torchvision.models import convnext, efficientnet, mobilenetv3, regnet, resnet, swin_transformer
    eff, _ = efficientnet._efficientnet_conf("efficientnet_b0", width_mult=0.25, depth_mult=0.25)
    eff, eff_last = eff[:3], 64
    v2, _ = efficientnet._efficientnet_conf("efficientnet_v2_s")
    v2 = v2[:2]
    for c in v2:
        c.input_channels, c.out_channels = 8, 8
    v3, v3_last = mobilenetv3._mobilenet_v3_conf("mobilenet_v3_small", width_mult=0.25)
    return {
        "resnet": lambda: M.ResNet(resnet.BasicBlock, [1, 1, 1, 1], num_classes=CLASSES),
        "densenet": lambda: M.DenseNet(growth_rate=8, block_config=(2, 2), num_init_features=16, bn_size=2,
                                        num_classes=CLASSES),
        "efficientnet": lambda: M.EfficientNet(eff, dropout=0.0, stochastic_depth_prob=0.0, num_classes=CLASSES,
                                                last_channel=eff_last),
        "efficientnet_v2": lambda: M.EfficientNet(v2, dropout=0.0, stochastic_depth_prob=0.0, num_classes=CLASSES,
                                                   last_channel=32),
        "mobilenet_v2": lambda: M.MobileNetV2(width_mult=0.25, num_classes=CLASSES, dropout=0.0,
                                              inverted_residual_setting=[[1, 16, 1, 1], [6, 24, 2, 2], [6, 32, 1, 2]]),
        "mobilenet_v3": lambda: M.MobileNetV3(v3[:4], 128, num_classes=CLASSES, dropout=0.0),
        "shufflenet": lambda: M.ShuffleNetV2([1, 1, 1], [8, 16, 32, 64, 64], num_classes=CLASSES),
        "squeezenet": lambda: M.squeezenet1_1(weights=None, num_classes=CLASSES),
        "regnet_x": lambda: M.RegNet(regnet.BlockParams.from_init_params(depth=2, w_0=8, w_a=8, w_m=2,
                                                                         group_width=8),
                                     num_classes=CLASSES, stem_width=8),
        "regnet_y": lambda: M.RegNet(regnet.BlockParams.from_init_params(depth=2, w_0=8, w_a=8, w_m=2,
                                                                          group_width=8, se_ratio=0.25),
                                      num_classes=CLASSES, stem_width=8),
        "convnext": lambda: M.ConvNeXt([convnext.CNBlockConfig(8, 16, 1), convnext.CNBlockConfig(16, None, 1)],
                                        num_classes=CLASSES),
        "swin": lambda: M.SwinTransformer([4, 4], 16, [1, 1], [2, 2], [2, 2], stochastic_depth_prob=0.0,
                                           num_classes=CLASSES),
        "swin_v2": lambda: M.SwinTransformer([4, 4], 16, [1, 1], [2, 2], [2, 2], stochastic_depth_prob=0.0,
                                              num_classes=CLASSES, block=swin_transformer.SwinTransformerBlockV2,
                                              downsample_layer=swin_transformer.PatchMergingV2),
        "maxvit": lambda: M.MaxVit((IMAGE, IMAGE), stem_channels=8, partition_size=2, block_channels=[8, 16],
                                    block_layers=[1, 1], head_dim=4, stochastic_depth_prob=0.0,
                                    num_classes=CLASSES),
        "vit": lambda: M.VisionTransformer(image_size=IMAGE, patch_size=8, num_layers=2, num_heads=2, hidden_dim=32,
                                            mlp_dim=37, num_classes=CLASSES),
    }


# torchvision's classes at tiny configs (_tv_classes): name -> (output layer, what the docs table says)
TV_CLASSES = {
    "resnet": ("fc", "ResNet(BasicBlock, [1, 1, 1, 1]) (resnet18's blocks, one per stage)"),
    "densenet": ("classifier", "DenseNet(growth_rate=8, block_config=(2, 2), num_init_features=16)"),
    "efficientnet": ("classifier.1", "EfficientNet(efficientnet_b0's first 3 stages at width_mult=0.25, "
                     "depth_mult=0.25, last_channel=64)"),
    "efficientnet_v2": ("classifier.1", "EfficientNet(efficientnet_v2_s's first two FusedMBConv stages at 8 channels)"),
    "mobilenet_v2": ("classifier.1", "MobileNetV2(width_mult=0.25, 3 stages of inverted "
                                     "residuals)"),
    "mobilenet_v3": ("classifier.3", "MobileNetV3(mobilenet_v3_small's first 4 blocks at width_mult=0.25, "
                                     "last_channel=128): squeeze-excite, "
                                     "hard-swish"),
    "shufflenet": ("fc", "ShuffleNetV2([1, 1, 1], [8, 16, 32, 64, 64]): channel shuffle"),
    "squeezenet": ("classifier.1", "squeezenet1_1 as it ships (0.7M parameters): a conv output layer"),
    "regnet_x": ("fc", "RegNet(depth=2, w_0=8, w_a=8, w_m=2, group_width=8)"),
    "regnet_y": ("fc", "the same with se_ratio=0.25 (regnet_y's squeeze-excite)"),
    "convnext": ("classifier.2", "ConvNeXt([CNBlockConfig(8, 16, 1), CNBlockConfig(16, None, 1)]): layer scale, "
                                 "LayerNorm2d"),
    "swin": ("head", "SwinTransformer(patch 4, embed_dim 16, depths [1, 1], window 2): shifted windows, relative "
                     "position bias"),
    "swin_v2": ("head", "swin_v2's blocks at the same config: cosine attention, learned logit scale, a CPB MLP"),
    "maxvit": ("classifier.5", "MaxVit(input_size=(32, 32), partition_size=2, block_channels=[8, 16]) (maxvit_t's "
                               "classes)"),
    "vit": ("heads.head", "VisionTransformer(image_size=32, patch_size=8, num_layers=2, hidden_dim=32) (vit_b_16's "
                          "class)"),
}


# ResNet's widths are fixed (64-512 channels, 4.9M parameters even at one block per stage): 16x16 images,
# and SGD in the training check (Adam's step over 5M parameters costs more than the model's pass).  Its
# Bottleneck (resnet50, resnext, wide_resnet: 23M+) is left out for the same reason: grouped convs are
# exercised by RegNet and ShuffleNet, bottlenecks by MobileNet's inverted residuals.
TV_SMALL_IMAGE = {"resnet": 16}


def _tv_class(name):
    def build():
        make = _tv_classes()[name]
        torch.manual_seed(0)
        return no_dropout(make())
    return build


def torchvision_specs(names=None):
    """The torchvision specs: its model classes at tiny configs (every check) and every builder as it
    ships that fits (``tier="builder"``: the lighter checks).

    ``names`` is the builders' list (``torchvision.models.list_models``).  Returns (specs, skipped)
    with skipped = {builder: reason}.
    """
    specs = [Spec(f"tv-{n}-tiny", "torchvision", _tv_class(n), "image", (head,), note=note,
                  image=TV_SMALL_IMAGE.get(n, IMAGE), optimizer="sgd" if n in TV_SMALL_IMAGE else "adam")
             for n, (head, note) in TV_CLASSES.items()]
    skipped = {}
    every = os.environ.get("RBP_ZOO_BUILDERS") == "all"
    for n in names or ():
        if n in TV_SKIPPED:
            skipped[n] = TV_SKIPPED[n]
            continue
        if n in TV_SLOW and not every:
            skipped[n] = (f"{TV_SLOW[n]:g}M parameters (over {TV_DEFAULT_PARAMS / 1e6:g}M): 2-5 s of CPU each, left "
                          "out of the default run for time; `RBP_ZOO_BUILDERS=all` includes it")
            continue
        specs.append(Spec(f"tv-{n}", "torchvision", _tv(n), "image", (TV_HEADS[_tv_family(n)],), tier="builder",
                          grad_dtype=torch.float32, note="as it ships"))
    return specs, skipped


def tv_builders():
    """torchvision's classification builders, or () where torchvision does not import."""
    try:
        import torchvision.models as M
    except Exception:        # ImportError, or RuntimeError beside a torch it was not built for
        return ()
    return tuple(M.list_models(module=M))


def all_specs():
    tv, _ = torchvision_specs(tv_builders())
    return HF + TIMM + tv
