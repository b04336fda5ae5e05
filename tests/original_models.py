"""Small, faithful re-implementations of the module structures the original projects train and save.

Each builder returns ``(checkpoint_object, reference)``: what the project passes to ``torch.save``
(with its wrappers, container entries and extra networks) and a function computing the published
backbone's features, to compare with the converted timm model. Written for the tests from the projects'
module layouts (names, wrappers, nesting); sizes are tiny so the tests run on two CPU cores.
"""

from __future__ import annotations

import argparse

import torch
import torchvision
from torch import nn


def randomize(model: nn.Module, seed: int) -> nn.Module:
    """Give every parameter and BatchNorm statistic distinct random values, so a swapped tensor shows."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, tensor in model.state_dict().items():
            if not tensor.is_floating_point():
                continue
            if name.endswith("running_var"):
                tensor.copy_(torch.rand(tensor.shape, generator=gen) + 0.5)
            elif name.endswith(("weight", "running_mean", "bias", "gamma", "table", "token", "embed")):
                fan_in = tensor[0].numel() if tensor.ndim > 1 else 4
                tensor.copy_(torch.randn(tensor.shape, generator=gen) / fan_in**0.5)
    return model.eval()


def dp(module: nn.Module) -> nn.DataParallel:
    """nn.DataParallel, as the projects wrap their models (keys gain `module.`)."""
    return nn.DataParallel(module)


def tv_resnet(num_classes: int = 1000, **kw) -> torchvision.models.ResNet:
    return torchvision.models.resnet18(num_classes=num_classes, **kw)


def pooled(resnet_without_fc: nn.Module):
    """Features of a torchvision ResNet up to global average pooling."""

    def run(x):
        m = resnet_without_fc
        x = m.maxpool(m.relu(m.bn1(m.conv1(x))))
        x = m.layer4(m.layer3(m.layer2(m.layer1(x))))
        return torch.flatten(m.avgpool(x), 1)

    return run


# --- MoCo v1/v2 (also PCL, CLSA): query/key encoders, a queue, DataParallel ---------------------------
class MoCo(nn.Module):
    def __init__(self, base_encoder, dim: int = 16, K: int = 32, mlp: bool = True) -> None:
        super().__init__()
        self.encoder_q = base_encoder(num_classes=dim)
        self.encoder_k = base_encoder(num_classes=dim)
        if mlp:
            dim_mlp = self.encoder_q.fc.weight.shape[1]
            self.encoder_q.fc = nn.Sequential(nn.Linear(dim_mlp, dim_mlp), nn.ReLU(), self.encoder_q.fc)
            self.encoder_k.fc = nn.Sequential(nn.Linear(dim_mlp, dim_mlp), nn.ReLU(), self.encoder_k.fc)
        self.register_buffer("queue", nn.functional.normalize(torch.randn(dim, K), dim=0))
        self.register_buffer("queue_ptr", torch.zeros(1, dtype=torch.long))


def moco_checkpoint():
    model = randomize(MoCo(tv_resnet), 1)
    randomize(model.encoder_k, 2)  # the key encoder differs from the query encoder
    ckpt = {
        "epoch": 200,
        "arch": "resnet18",
        "state_dict": dp(model).state_dict(),
        "optimizer": {"state": {}},
    }
    q = model.encoder_q
    return ckpt, pooled(q)


# --- SwAV / DeepCluster-v2 / SeLa-v2: padded stem, projection head, prototypes ------------------------
class SwAVResNet(nn.Module):
    def __init__(self, output_dim: int = 16, nmb_prototypes: int = 30) -> None:
        super().__init__()
        base = tv_resnet()
        self.padding = nn.ConstantPad2d(1, 0.0)
        self.conv1 = nn.Conv2d(3, 64, kernel_size=7, stride=2, padding=2, bias=False)
        for name in ("bn1", "relu", "maxpool", "layer1", "layer2", "layer3", "layer4", "avgpool"):
            setattr(self, name, getattr(base, name))
        self.projection_head = nn.Sequential(
            nn.Linear(512, 32), nn.BatchNorm1d(32), nn.ReLU(), nn.Linear(32, output_dim)
        )
        self.prototypes = nn.Linear(output_dim, nmb_prototypes, bias=False)

    def forward_backbone(self, x):
        x = self.maxpool(self.relu(self.bn1(self.conv1(self.padding(x)))))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return torch.flatten(self.avgpool(x), 1)


def swav_checkpoint():
    model = randomize(SwAVResNet(), 3)
    return dp(model).state_dict(), model.forward_backbone  # the released file is the raw DDP state dict


# --- Barlow Twins: backbone (fc = Identity), projector, affine-free BN ---------------------------------
class BarlowTwins(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.backbone = tv_resnet(zero_init_residual=True)
        self.backbone.fc = nn.Identity()
        self.projector = nn.Sequential(
            nn.Linear(512, 32, bias=False), nn.BatchNorm1d(32), nn.ReLU(), nn.Linear(32, 32, bias=False)
        )
        self.bn = nn.BatchNorm1d(32, affine=False)


def barlowtwins_checkpoint():
    model = randomize(BarlowTwins(), 4)
    return {"epoch": 1000, "model": dp(model).state_dict(), "optimizer": {}}, pooled(model.backbone)


def barlowtwins_release():
    model = randomize(BarlowTwins(), 5)
    return model.backbone.state_dict(), pooled(
        model.backbone
    )  # torch.save(model.module.backbone.state_dict())


# --- SimSiam: encoder whose fc is the projector, predictor ---------------------------------------------
class SimSiam(nn.Module):
    def __init__(self, dim: int = 32, pred_dim: int = 8) -> None:
        super().__init__()
        self.encoder = tv_resnet(num_classes=dim, zero_init_residual=True)
        prev = self.encoder.fc.weight.shape[1]
        self.encoder.fc = nn.Sequential(
            nn.Linear(prev, prev, bias=False),
            nn.BatchNorm1d(prev),
            nn.ReLU(inplace=True),
            nn.Linear(prev, prev, bias=False),
            nn.BatchNorm1d(prev),
            nn.ReLU(inplace=True),
            self.encoder.fc,
            nn.BatchNorm1d(dim, affine=False),
        )
        self.predictor = nn.Sequential(
            nn.Linear(dim, pred_dim, bias=False),
            nn.BatchNorm1d(pred_dim),
            nn.ReLU(inplace=True),
            nn.Linear(pred_dim, dim),
        )


def simsiam_checkpoint():
    model = randomize(SimSiam(), 6)
    return {"epoch": 100, "arch": "resnet18", "state_dict": dp(model).state_dict(), "optimizer": {}}, pooled(
        model.encoder
    )


# --- PyContrast (InsDis, PIRL, InfoMin): {'opt','model','model_ema','contrast',...} ---------------------
class PyContrastNet(nn.Module):
    def __init__(self, jigsaw: bool) -> None:
        super().__init__()
        self.encoder = tv_resnet()
        del self.encoder.fc  # PyContrast's ResNet ends at the pooled features
        self.head = nn.Sequential(nn.Linear(512, 512), nn.ReLU(inplace=True), nn.Linear(512, 16))
        if jigsaw:
            self.head_jig = nn.Sequential(nn.Linear(512 * 9, 16))


def pycontrast_checkpoint(jigsaw: bool = True):
    model, ema = randomize(PyContrastNet(jigsaw), 7), randomize(PyContrastNet(jigsaw), 8)
    ckpt = {
        "opt": argparse.Namespace(method="PIRL" if jigsaw else "InfoMin", arch="resnet18"),
        "model": dp(model).state_dict(),
        "model_ema": dp(ema).state_dict(),
        "contrast": {"memory": torch.randn(64, 16)},
        "optimizer": {},
        "epoch": 800,
    }
    return ckpt, pooled(model.encoder)


# --- ViT pieces shared by DINO, MAE and MoCo-v3 (the timm-0.3/DINO module names) ------------------------
class Attention(nn.Module):
    def __init__(self, dim: int, num_heads: int) -> None:
        super().__init__()
        self.num_heads, self.scale = num_heads, (dim // num_heads) ** -0.5
        self.qkv = nn.Linear(dim, dim * 3, bias=True)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x):
        B, N, C = x.shape
        qkv = self.qkv(x).reshape(B, N, 3, self.num_heads, C // self.num_heads).permute(2, 0, 3, 1, 4)
        attn = ((qkv[0] @ qkv[1].transpose(-2, -1)) * self.scale).softmax(dim=-1)
        return self.proj((attn @ qkv[2]).transpose(1, 2).reshape(B, N, C))


class Mlp(nn.Module):
    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.fc1, self.act, self.fc2 = nn.Linear(dim, hidden), nn.GELU(), nn.Linear(hidden, dim)

    def forward(self, x):
        return self.fc2(self.act(self.fc1(x)))


class Block(nn.Module):
    def __init__(self, dim: int, num_heads: int) -> None:
        super().__init__()
        self.norm1, self.attn = nn.LayerNorm(dim, eps=1e-6), Attention(dim, num_heads)
        self.norm2, self.mlp = nn.LayerNorm(dim, eps=1e-6), Mlp(dim, dim * 4)

    def forward(self, x):
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class PatchEmbed(nn.Module):
    def __init__(self, patch: int, dim: int) -> None:
        super().__init__()
        self.proj = nn.Conv2d(3, dim, kernel_size=patch, stride=patch)

    def forward(self, x):
        return self.proj(x).flatten(2).transpose(1, 2)


VIT = {"img_size": 32, "patch_size": 8, "embed_dim": 48, "depth": 2, "num_heads": 3}


class ViT(nn.Module):
    """DINO's vision_transformer.VisionTransformer (also the MAE encoder's and MoCo-v3's layout)."""

    def __init__(self, img_size=32, patch_size=8, embed_dim=48, depth=2, num_heads=3) -> None:
        super().__init__()
        self.patch_embed = PatchEmbed(patch_size, embed_dim)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, embed_dim))
        self.pos_embed = nn.Parameter(torch.zeros(1, (img_size // patch_size) ** 2 + 1, embed_dim))
        self.blocks = nn.ModuleList([Block(embed_dim, num_heads) for _ in range(depth)])
        self.norm = nn.LayerNorm(embed_dim, eps=1e-6)
        self.head = nn.Identity()

    def tokens(self, x):
        x = self.patch_embed(x)
        x = torch.cat([self.cls_token.expand(x.shape[0], -1, -1), x], dim=1) + self.pos_embed
        for block in self.blocks:
            x = block(x)
        return self.norm(x)

    def forward(self, x):
        return self.head(self.tokens(x)[:, 0])


# --- DINO: MultiCropWrapper(backbone, DINOHead), teacher + student, args Namespace ---------------------
class DINOHead(nn.Module):
    def __init__(self, in_dim: int, out_dim: int = 64, bottleneck: int = 16) -> None:
        super().__init__()
        self.mlp = nn.Sequential(
            nn.Linear(in_dim, 32), nn.GELU(), nn.Linear(32, 32), nn.GELU(), nn.Linear(32, bottleneck)
        )
        self.last_layer = nn.utils.parametrizations.weight_norm(nn.Linear(bottleneck, out_dim, bias=False))


class MultiCropWrapper(nn.Module):
    def __init__(self, backbone: nn.Module, head: nn.Module) -> None:
        super().__init__()
        backbone.fc, backbone.head = nn.Identity(), nn.Identity()
        self.backbone, self.head = backbone, head


def dino_checkpoint(arch: str):
    make = (lambda: ViT(**VIT)) if arch == "vit" else tv_resnet
    dim = VIT["embed_dim"] if arch == "vit" else 512
    student = randomize(MultiCropWrapper(make(), DINOHead(dim)), 9)
    teacher = randomize(MultiCropWrapper(make(), DINOHead(dim)), 10)
    # main_dino.py: the student is always DDP; the teacher only when it has BatchNorm (ResNet)
    teacher_state = dp(teacher).state_dict() if arch == "resnet" else teacher.state_dict()
    ckpt = {
        "student": dp(student).state_dict(),
        "teacher": teacher_state,
        "optimizer": {},
        "epoch": 100,
        "args": argparse.Namespace(arch=arch, out_dim=64),
        "dino_loss": {"center": torch.zeros(1, 64)},
    }
    ref = teacher.backbone if arch == "vit" else pooled(teacher.backbone)
    return ckpt, ref


# --- MAE: encoder + decoder, mask token, fixed pos embeds; {'model','optimizer','epoch','scaler','args'} -
class MaskedAutoencoderViT(ViT):
    def __init__(self, decoder_dim: int = 32) -> None:
        super().__init__(**VIT)
        n = (VIT["img_size"] // VIT["patch_size"]) ** 2
        self.decoder_embed = nn.Linear(VIT["embed_dim"], decoder_dim)
        self.mask_token = nn.Parameter(torch.zeros(1, 1, decoder_dim))
        self.decoder_pos_embed = nn.Parameter(torch.zeros(1, n + 1, decoder_dim), requires_grad=False)
        self.decoder_blocks = nn.ModuleList([Block(decoder_dim, 2)])
        self.decoder_norm = nn.LayerNorm(decoder_dim)
        self.decoder_pred = nn.Linear(decoder_dim, VIT["patch_size"] ** 2 * 3)


def mae_checkpoint():
    model = randomize(MaskedAutoencoderViT(), 11)
    ckpt = {
        "model": model.state_dict(),
        "optimizer": {},
        "epoch": 799,
        "scaler": {},
        "args": argparse.Namespace(model="mae_vit_small", mask_ratio=0.75),
    }
    return ckpt, model.tokens  # every token, as timm's forward_features returns


# --- MoCo-v3: base/momentum ViT encoders with MLP heads, predictor, DDP ----------------------------------
def _mlp(layers: int, in_dim: int, hidden: int, out_dim: int) -> nn.Sequential:
    mods = []
    for i in range(layers):
        d1, d2 = (in_dim if i == 0 else hidden), (out_dim if i == layers - 1 else hidden)
        mods.append(nn.Linear(d1, d2, bias=False))
        if i < layers - 1:
            mods += [nn.BatchNorm1d(d2), nn.ReLU(inplace=True)]
        else:
            mods.append(nn.BatchNorm1d(d2, affine=False))
    return nn.Sequential(*mods)


class MoCoV3(nn.Module):
    def __init__(self, dim: int = 16, mlp_dim: int = 32) -> None:
        super().__init__()
        self.base_encoder, self.momentum_encoder = ViT(**VIT), ViT(**VIT)
        self.base_encoder.head = _mlp(3, VIT["embed_dim"], mlp_dim, dim)
        self.momentum_encoder.head = _mlp(3, VIT["embed_dim"], mlp_dim, dim)
        self.predictor = _mlp(2, dim, mlp_dim, dim)


def mocov3_checkpoint():
    model = randomize(MoCoV3(), 12)
    randomize(model.momentum_encoder, 13)
    ckpt = {
        "epoch": 300,
        "arch": "vit_small",
        "state_dict": dp(model).state_dict(),
        "optimizer": {},
        "scaler": {},
    }
    return ckpt, lambda x: model.base_encoder.tokens(x)[:, 0]


# --- facebookresearch/ConvNeXt --------------------------------------------------------------------------
class LayerNormCF(nn.Module):
    """ConvNeXt's LayerNorm for channels_first tensors."""

    def __init__(self, dim: int, eps: float = 1e-6) -> None:
        super().__init__()
        self.weight, self.bias, self.eps = nn.Parameter(torch.ones(dim)), nn.Parameter(torch.zeros(dim)), eps

    def forward(self, x):
        u = x.mean(1, keepdim=True)
        s = (x - u).pow(2).mean(1, keepdim=True)
        x = (x - u) / torch.sqrt(s + self.eps)
        return self.weight[:, None, None] * x + self.bias[:, None, None]


class ConvNeXtBlock(nn.Module):
    def __init__(self, dim: int) -> None:
        super().__init__()
        self.dwconv = nn.Conv2d(dim, dim, kernel_size=7, padding=3, groups=dim)
        self.norm = nn.LayerNorm(dim, eps=1e-6)
        self.pwconv1, self.act, self.pwconv2 = nn.Linear(dim, 4 * dim), nn.GELU(), nn.Linear(4 * dim, dim)
        self.gamma = nn.Parameter(1e-6 * torch.ones(dim))

    def forward(self, x):
        y = self.dwconv(x).permute(0, 2, 3, 1)
        y = self.gamma * self.pwconv2(self.act(self.pwconv1(self.norm(y))))
        return x + y.permute(0, 3, 1, 2)


CONVNEXT = {"depths": (1, 1, 2, 1), "dims": (8, 16, 24, 32)}


class ConvNeXt(nn.Module):
    def __init__(self, num_classes: int = 10, depths=CONVNEXT["depths"], dims=CONVNEXT["dims"]) -> None:
        super().__init__()
        self.downsample_layers = nn.ModuleList(
            [nn.Sequential(nn.Conv2d(3, dims[0], kernel_size=4, stride=4), LayerNormCF(dims[0]))]
            + [
                nn.Sequential(LayerNormCF(dims[i]), nn.Conv2d(dims[i], dims[i + 1], kernel_size=2, stride=2))
                for i in range(3)
            ]
        )
        self.stages = nn.ModuleList(
            [nn.Sequential(*[ConvNeXtBlock(dims[i]) for _ in range(depths[i])]) for i in range(4)]
        )
        self.norm = nn.LayerNorm(dims[-1], eps=1e-6)
        self.head = nn.Linear(dims[-1], num_classes)

    def forward_features(self, x):
        for down, stage in zip(self.downsample_layers, self.stages, strict=True):
            x = stage(down(x))
        return self.norm(x.mean([-2, -1]))

    def forward(self, x):
        return self.head(self.forward_features(x))


def convnext_checkpoint():
    model = randomize(ConvNeXt(), 14)
    return {"model": model.state_dict()}, model  # reference gives logits (head kept, 10 classes)


# --- microsoft/Swin-Transformer (downsample at the end of a stage, persistent buffers) -------------------
def window_partition(x, ws):
    B, H, W, C = x.shape
    x = x.view(B, H // ws, ws, W // ws, ws, C)
    return x.permute(0, 1, 3, 2, 4, 5).contiguous().view(-1, ws, ws, C)


def window_reverse(windows, ws, H, W):
    B = int(windows.shape[0] / (H * W / ws / ws))
    x = windows.view(B, H // ws, W // ws, ws, ws, -1)
    return x.permute(0, 1, 3, 2, 4, 5).contiguous().view(B, H, W, -1)


class WindowAttention(nn.Module):
    def __init__(self, dim: int, ws: int, num_heads: int) -> None:
        super().__init__()
        self.num_heads, self.scale = num_heads, (dim // num_heads) ** -0.5
        self.relative_position_bias_table = nn.Parameter(torch.zeros((2 * ws - 1) ** 2, num_heads))
        coords = torch.flatten(
            torch.stack(torch.meshgrid(torch.arange(ws), torch.arange(ws), indexing="ij")), 1
        )
        rel = (coords[:, :, None] - coords[:, None, :]).permute(1, 2, 0).contiguous()
        rel[:, :, 0] += ws - 1
        rel[:, :, 1] += ws - 1
        rel[:, :, 0] *= 2 * ws - 1
        self.register_buffer("relative_position_index", rel.sum(-1))
        self.qkv, self.proj = nn.Linear(dim, dim * 3), nn.Linear(dim, dim)

    def forward(self, x, mask=None):
        B_, N, C = x.shape
        qkv = self.qkv(x).reshape(B_, N, 3, self.num_heads, C // self.num_heads).permute(2, 0, 3, 1, 4)
        attn = (qkv[0] * self.scale) @ qkv[1].transpose(-2, -1)
        bias = self.relative_position_bias_table[self.relative_position_index.view(-1)].view(N, N, -1)
        attn = attn + bias.permute(2, 0, 1).contiguous().unsqueeze(0)
        if mask is not None:
            nW = mask.shape[0]
            attn = attn.view(B_ // nW, nW, self.num_heads, N, N) + mask.unsqueeze(1).unsqueeze(0)
            attn = attn.view(-1, self.num_heads, N, N)
        x = (attn.softmax(dim=-1) @ qkv[2]).transpose(1, 2).reshape(B_, N, C)
        return self.proj(x)


class SwinTransformerBlock(nn.Module):
    def __init__(self, dim, resolution, num_heads, window_size, shift_size) -> None:
        super().__init__()
        self.resolution, self.ws, self.ss = resolution, window_size, shift_size
        if min(resolution) <= self.ws:
            self.ss, self.ws = 0, min(resolution)
        self.norm1, self.attn = nn.LayerNorm(dim), WindowAttention(dim, self.ws, num_heads)
        self.norm2, self.mlp = nn.LayerNorm(dim), Mlp(dim, dim * 4)
        attn_mask = None
        if self.ss > 0:
            H, W = resolution
            img_mask, cnt = torch.zeros((1, H, W, 1)), 0
            spans = (slice(0, -self.ws), slice(-self.ws, -self.ss), slice(-self.ss, None))
            for h in spans:
                for w in spans:
                    img_mask[:, h, w, :] = cnt
                    cnt += 1
            mw = window_partition(img_mask, self.ws).view(-1, self.ws * self.ws)
            attn_mask = mw.unsqueeze(1) - mw.unsqueeze(2)
            attn_mask = attn_mask.masked_fill(attn_mask != 0, -100.0).masked_fill(attn_mask == 0, 0.0)
        self.register_buffer("attn_mask", attn_mask)

    def forward(self, x):
        (H, W), (B, _, C) = self.resolution, x.shape
        shortcut, x = x, self.norm1(x).view(B, H, W, C)
        if self.ss > 0:
            x = torch.roll(x, shifts=(-self.ss, -self.ss), dims=(1, 2))
        windows = self.attn(window_partition(x, self.ws).view(-1, self.ws * self.ws, C), mask=self.attn_mask)
        x = window_reverse(windows.view(-1, self.ws, self.ws, C), self.ws, H, W)
        if self.ss > 0:
            x = torch.roll(x, shifts=(self.ss, self.ss), dims=(1, 2))
        x = shortcut + x.reshape(B, H * W, C)
        return x + self.mlp(self.norm2(x))


class PatchMerging(nn.Module):
    def __init__(self, resolution, dim) -> None:
        super().__init__()
        self.resolution = resolution
        self.reduction, self.norm = nn.Linear(4 * dim, 2 * dim, bias=False), nn.LayerNorm(4 * dim)

    def forward(self, x):
        (H, W), (B, _, C) = self.resolution, x.shape
        x = x.view(B, H, W, C)
        x = torch.cat([x[:, 0::2, 0::2], x[:, 1::2, 0::2], x[:, 0::2, 1::2], x[:, 1::2, 1::2]], -1)
        return self.reduction(self.norm(x.view(B, -1, 4 * C)))


class BasicLayer(nn.Module):
    def __init__(self, dim, resolution, depth, num_heads, window_size, downsample: bool) -> None:
        super().__init__()
        self.blocks = nn.ModuleList(
            [
                SwinTransformerBlock(
                    dim, resolution, num_heads, window_size, 0 if i % 2 == 0 else window_size // 2
                )
                for i in range(depth)
            ]
        )
        self.downsample = PatchMerging(resolution, dim) if downsample else None

    def forward(self, x):
        for block in self.blocks:
            x = block(x)
        return self.downsample(x) if self.downsample is not None else x


SWIN = {"embed_dim": 12, "depths": (2, 2, 2, 2), "num_heads": (1, 2, 2, 4)}


class SwinTransformer(nn.Module):
    def __init__(
        self,
        img_size=224,
        window_size=7,
        num_classes=0,
        embed_dim=12,
        depths=(2, 2, 2, 2),
        num_heads=(1, 2, 2, 4),
        patch_size=4,
    ) -> None:
        super().__init__()
        self.patch_embed = nn.Module()
        self.patch_embed.proj = nn.Conv2d(3, embed_dim, kernel_size=patch_size, stride=patch_size)
        self.patch_embed.norm = nn.LayerNorm(embed_dim)
        res = img_size // patch_size
        self.layers = nn.ModuleList(
            [
                BasicLayer(
                    embed_dim * 2**i,
                    (res // 2**i, res // 2**i),
                    depths[i],
                    num_heads[i],
                    window_size,
                    downsample=i < len(depths) - 1,
                )
                for i in range(len(depths))
            ]
        )
        self.num_features = embed_dim * 2 ** (len(depths) - 1)
        self.norm = nn.LayerNorm(self.num_features)
        self.head = nn.Linear(self.num_features, num_classes) if num_classes > 0 else nn.Identity()

    def forward_features(self, x):
        x = self.patch_embed.norm(self.patch_embed.proj(x).flatten(2).transpose(1, 2))
        for layer in self.layers:
            x = layer(x)
        return self.norm(x).mean(1)

    def forward(self, x):
        return self.head(self.forward_features(x))


def swin_checkpoint():
    model = randomize(SwinTransformer(num_classes=7, **SWIN), 15)
    return {"model": model.state_dict()}, model  # logits, head kept (7 classes)


# --- SimMIM: SwinTransformerForSimMIM (mask token, no head) + a pixel-shuffle decoder, 192 px / window 6 ---
class SwinForSimMIM(SwinTransformer):
    def __init__(self, **kw) -> None:
        super().__init__(num_classes=0, **kw)
        self.mask_token = nn.Parameter(torch.zeros(1, 1, kw.get("embed_dim", 12)))


class SimMIM(nn.Module):
    def __init__(self, encoder: nn.Module, encoder_stride: int = 32) -> None:
        super().__init__()
        self.encoder = encoder
        self.decoder = nn.Sequential(
            nn.Conv2d(encoder.num_features, encoder_stride**2 * 3, kernel_size=1),
            nn.PixelShuffle(encoder_stride),
        )


def simmim_checkpoint():
    model = randomize(SimMIM(SwinForSimMIM(img_size=192, window_size=6, **SWIN)), 16)
    return {"model": model.state_dict()}, model.encoder.forward_features  # the Zenodo release layout


# --- JLiang lab BenchmarkTransferLearning training checkpoints ------------------------------------------
def jlianglab_checkpoint(arch: str):
    if arch == "resnet":
        model = tv_resnet()
        model.fc = nn.Sequential(nn.Linear(model.fc.in_features, 14), nn.Sigmoid())  # --activate Sigmoid
        model = randomize(model, 17)
        ref = model
    else:
        model = randomize(SwinTransformer(num_classes=14, **SWIN), 18)
        ref = lambda x: torch.sigmoid(model(x))  # noqa: E731 - the lab applies Sigmoid in its loss/eval
    ckpt = {
        "epoch": 42,
        "lossMIN": 0.1234,
        "state_dict": dp(model).state_dict(),
        "optimizer": {"state": {}},
        "scheduler": {"last_epoch": 42},
    }
    return ckpt, ref


# --- RadImageNet: nn.Sequential(*list(resnet.children())[:-2]) as `backbone` -------------------------------
class RadImageNetBackbone(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.backbone = nn.Sequential(*list(tv_resnet().children())[:-2])

    def forward(self, x):
        return self.backbone(x)


def radimagenet_checkpoint():
    model = randomize(RadImageNetBackbone(), 19)
    return model.state_dict(), model  # a feature map, as timm's forward_features returns


# --- a torchvision detector: backbone.body (FrozenBatchNorm2d) + FPN + RPN + ROI heads ---------------------
def detector_checkpoint():
    from torchvision.models.detection import FasterRCNN
    from torchvision.models.detection.backbone_utils import resnet_fpn_backbone

    backbone = resnet_fpn_backbone(backbone_name="resnet18", weights=None, trainable_layers=3)
    model = randomize(FasterRCNN(backbone, num_classes=3, min_size=64, max_size=64), 20)
    body = model.backbone.body
    return {"model": model.state_dict(), "epoch": 26}, lambda x: body(x)["3"]


# --- torchvision DenseNet with the pre-0.4 key style `norm.1` ---------------------------------------------
DENSENET = {"growth_rate": 8, "block_config": (1, 2, 2, 1)}


def densenet_legacy_checkpoint():
    import re

    model = randomize(
        torchvision.models.DenseNet(num_init_features=16, bn_size=4, num_classes=6, **DENSENET), 21
    )
    legacy = {
        re.sub(r"(denselayer\d+\.)(norm|relu|conv)([12])\.", r"\1\2.\3.", k): v
        for k, v in model.state_dict().items()
    }
    return legacy, model  # logits (6 classes kept)


def jlianglab_convnext_checkpoint():
    """The lab builds ConvNeXt with timm.create_model(arch, num_classes=...) inside DataParallel."""
    import timm

    model = randomize(timm.create_model("convnext_tiny", num_classes=14, **CONVNEXT), 22)
    ckpt = {
        "epoch": 7,
        "lossMIN": 0.2,
        "state_dict": dp(model).state_dict(),
        "optimizer": {},
        "scheduler": {},
    }
    return ckpt, model


def timm_train_checkpoint():
    """timm's train.py checkpoint: {'epoch','arch','state_dict','optimizer','version','args','state_dict_ema'}."""
    import timm

    model = randomize(timm.create_model("resnet18", num_classes=4), 23)
    ema = randomize(timm.create_model("resnet18", num_classes=4), 24)
    ckpt = {
        "epoch": 10,
        "arch": "resnet18",
        "state_dict": model.state_dict(),
        "optimizer": {},
        "version": 2,
        "args": argparse.Namespace(model="resnet18"),
        "state_dict_ema": ema.state_dict(),
    }
    return ckpt, model


def moco_v1_checkpoint():
    """MoCo v1 (and PCL): a linear fc head, no MLP; saved the same way."""
    model = randomize(MoCo(tv_resnet, mlp=False), 25)
    return {"epoch": 200, "arch": "resnet18", "state_dict": dp(model).state_dict()}, pooled(model.encoder_q)
