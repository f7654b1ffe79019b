"""Direct-label probe: does the vision tower learn 10-class classification on 1-object synthetic images?"""
import argparse
import os
import sys
import time

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from ovseg import build_model
from ovseg.data.synthetic.scene import SyntheticConfig, render_scene
from ovseg.eval.segment import IMAGENET_MEAN, IMAGENET_STD
from ovseg.train.engine import build_optimizer

p = argparse.ArgumentParser()
p.add_argument("--model", default="groupvit")  # groupvit | cnn
p.add_argument("--lr", type=float, default=2e-3)
p.add_argument("--wd", type=float, default=0.05)
p.add_argument("--steps", type=int, default=200)
p.add_argument("--batch", type=int, default=128)
p.add_argument("--warmup", type=int, default=0)
p.add_argument("--set", nargs="*", default=[])
p.add_argument("--pool", default="mean")
p.add_argument("--n", type=int, default=8000)
p.add_argument("--objs", type=int, default=1)
p.add_argument("--bg", default="clutter")
p.add_argument("--stem", default="patch")
p.add_argument("--scale", type=float, nargs=2, default=None)
a = p.parse_args()
import ovseg.data.synthetic.scene as SY

if a.bg == "plain":
    SY.cluttered_background = lambda rng, size: np.full((size, size, 3), 128, np.uint8)
elif a.bg == "smooth":
    _cb = SY.cluttered_background
    def smooth(rng, size):
        from PIL import Image
        cells = int(rng.integers(2, 6))
        field = rng.uniform(0, 255, (cells, cells, 3)).astype(np.uint8)
        return np.asarray(Image.fromarray(field, "RGB").resize((size, size), Image.BICUBIC), dtype=np.uint8).copy()
    SY.cluttered_background = smooth
torch.set_num_threads(1); torch.manual_seed(0)
cfg = SyntheticConfig(max_objects=a.objs, **({"min_scale": a.scale[0], "max_scale": a.scale[1]} if a.scale else {}))
def data(split, n):
    X, Y = [], []
    for i in range(n):
        s = render_scene(cfg, 0, split, i); X.append(s.image)
        y = np.zeros(10, np.float32); y[s.object_classes] = 1; Y.append(y)
    x = torch.from_numpy(np.stack(X)).permute(0, 3, 1, 2).float() / 255
    x = (x - torch.tensor(IMAGENET_MEAN)[:, None, None]) / torch.tensor(IMAGENET_STD)[:, None, None]
    return x, torch.from_numpy(np.stack(Y))
Xtr, Ytr = data("train", a.n); Xva, Yva = data("val", 500)

class Net(nn.Module):
    def __init__(self):
        super().__init__()
        if a.model == "groupvit":
            self.v = build_model("tiny", a.set).vision
            if a.stem == "conv":
                class Stem(nn.Module):
                    def __init__(s2):
                        super().__init__()
                        s2.net = nn.Sequential(*[m for i, o in [(3, 32), (32, 64), (64, 128)]
                                     for m in (nn.Conv2d(i, o, 3, 2, 1), nn.BatchNorm2d(o), nn.ReLU())], nn.Conv2d(128, 128, 1))
                    def forward(s2, x):
                        return s2.net(x).flatten(2).transpose(1, 2)
                self.v.patch_embed = Stem()
        else:
            self.v = nn.Sequential(*[m for i, o in [(3, 32), (32, 64), (64, 128), (128, 128)]
                                     for m in (nn.Conv2d(i, o, 3, 2, 1), nn.BatchNorm2d(o), nn.ReLU())])
        self.head = nn.Linear(128, 10)
    def _blocks(self, L, z):
        for b in L.blocks: z = b(z)
        for b in self.v.layers[1].blocks: z = b(z)
        return z
    def forward(self, x):
        if a.model == "groupvit":
            if a.pool == "stage1":
                v = self.v; z = v.patch_embed(x) + v.pos_embed
                z, _, _ = v.layers[0].blocks and (lambda L: (lambda zz: (zz, None, None))(self._blocks(L, z)))(v.layers[0])
                return self.head(v.norm(z).mean(1))
            return self.head(self.v(x).tokens.mean(1) if a.pool == "mean" else self.v(x).tokens.max(1)[0])
        return self.head(self.v(x).mean((2, 3)))
net = Net()
opt = build_optimizer(net, a.lr, a.wd)
t0 = time.time()
for s in range(a.steps + 1):
    if s % 25 == 0:
        net.eval()
        with torch.no_grad():
            lo = net(Xva)
        if a.objs == 1:
            acc = (lo.argmax(1) == Yva.argmax(1)).float().mean().item()
        else:
            acc = Yva.gather(1, lo.argmax(1, keepdim=True)).mean().item()
        print(f"step {s} val top1 {acc:.3f} t {time.time()-t0:.0f}s", flush=True)
        net.train()
    if s == a.steps: break
    lr = a.lr * min(1.0, (s + 1) / a.warmup) if a.warmup else a.lr
    for g in opt.param_groups: g["lr"] = lr
    idx = torch.randint(0, a.n, (a.batch,))
    x = Xtr[idx]; x = torch.where(torch.rand(a.batch, 1, 1, 1) < 0.5, x.flip(-1), x)
    lo = net(x)
    y = Ytr[idx]
    loss = F.cross_entropy(lo, y.argmax(1)) if a.objs == 1 else F.binary_cross_entropy_with_logits(lo, y)
    opt.zero_grad(); loss.backward(); torch.nn.utils.clip_grad_norm_(net.parameters(), 5.0); opt.step()
    if s % 25 == 0: print(f"  step {s} loss {loss.item():.3f}", flush=True)
