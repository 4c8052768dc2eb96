"""Throughput of every zoo model against its reference implementation, per setting.

For each model, clip shape, batch size, mode (``infer`` / ``train``) and setting this script runs
one worker process that builds our model and its reference with the *same weights*, checks that
their outputs agree, applies the setting to both, and then times them alternately (``--iters``
rounds, median step time), so every ours/reference ratio compares numbers measured side by side.
Each worker also measures the float32 matmul peak of the machine, and the parent reports achieved
GFLOP/s against the median of those peaks.

References: ``torchvision.models.video`` ``r3d_18``, ``mc3_18``, ``r2plus1d_18`` and ``s3d`` (its
fixed ``AvgPool3d((2, 7, 7))`` head only fits 16x224, so at other sizes it gets an adaptive average
pool, which is what ours does); ``i3d`` is compared with the same network built with symmetric
padding (PyTorch's own conv / pool padding, floor mode) to price TensorFlow "SAME" padding.

Settings (``--settings``; ``+alloc`` after any name first calls
:func:`fima_models.inference.configure_allocator` in that worker):

* ``fp32``: eval mode under ``torch.inference_mode`` (train: plain SGD step);
* ``channels_last``: model and input in ``torch.channels_last_3d``;
* ``compile`` / ``compile_freeze``: ``torch.compile`` without / with inductor freezing
  (weights as constants, conv + BatchNorm folding and fusion);
* ``fold`` / ``fold_cl``: BatchNorm folded into the convs (eager), without / with channels-last-3d
  (the fast path minus the factorised convs as 2-D convs);
* ``fast``: :func:`fima_models.inference.optimize_for_inference` with the device's default plan;
* ``fast_compile``: the same with ``compile=True``;
* ``bf16``: bfloat16 autocast, only where the hardware computes bfloat16 natively (skipped and
  reported otherwise);
* ``precisions``: one worker timing, interleaved, our fp32 fast path, the bf16 plan
  (``optimize_for_inference(precision='bf16')``: oneDNN fused convs where available), the same
  without the oneDNN fusion (the earlier eager plan: 2-D rewrite, separate ReLU / add), the bf16
  plan compiled and bf16 autocast of the plain model (``--rows`` picks some), with the fp32 and bf16 matmul peaks measured in the same process (before and after, the
  higher kept), the pooled features' cosine and max relative error against plain fp32, the CPU's
  bfloat16 flags and the load average (where skipped without native bfloat16).

Each worker reports clips/s, the peak memory of a step (CPU: growth of the resident set above its
level before the step, via ``/proc/self/clear_refs``; CUDA: ``max_memory_allocated``), parameters,
GFLOPs per clip (``torch.utils.flop_counter`` on the meta device) and setup time (compile
included). With ``--baseline`` every worker also times our plain fp32 model alongside, so the
speed-up of a setting over the default is measured side by side too. A full sweep is slow on two CPU cores; pick a subset, e.g.::

    python benchmarks/models.py --models r2plus1d_18 --sizes 16x112 --batches 8 \\
        --settings fp32 channels_last fast fast+alloc --iters 3 --json benchmarks/results/cpu.json
    python benchmarks/models.py --device cuda --batches 8 32 --settings fp32 channels_last fast bf16

Results are printed as a markdown table and written as JSON with the machine and versions.
"""
from __future__ import annotations

import argparse
import copy
import json
import logging
import os
import statistics
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import fima_models  # noqa: E402
from benchmarks.extract import machine_info  # noqa: E402
from fima_models.inference import (  # noqa: E402
    InferencePlan, configure_allocator, optimize_for_inference, output_mismatch, plan_inference,
)
from fima_models.models.i3d import MaxPool3dSame, Unit3d  # noqa: E402

MODELS = ('r3d_18', 'mc3_18', 'r2plus1d_18', 's3d', 'i3d')
SETTINGS = ('fp32', 'channels_last', 'compile', 'compile_freeze', 'fold', 'fold_cl', 'fast', 'fast_compile', 'bf16',
            'precisions')
TRAIN_SETTINGS = ('fp32', 'channels_last')
#: Largest relative output difference between ours and the reference (same weights, fp32).
MAX_REF_MISMATCH = 1e-4


# ---------------------------------------------------------------------------------------------
# models
# ---------------------------------------------------------------------------------------------
def symmetric_padding_i3d(model: nn.Module) -> nn.Module:
    """A copy of an I3D with every "SAME" padding replaced by PyTorch's symmetric padding.

    Convs pad ``(k - 1) // 2`` on both sides inside the conv; pools become ``nn.MaxPool3d`` with the
    same symmetric padding (floor mode, or ceil mode for the unpadded 2x2x2 pool). Same weights and,
    at 16x112 and 16x224, the same feature-map sizes and FLOPs as the "SAME" network.
    """
    sym = copy.deepcopy(model)
    for name, module in list(sym.named_modules()):
        if isinstance(module, Unit3d) and not module.conv_pads:
            module.conv_pads = True
            module.conv3d.padding = tuple((k - 1) // 2 for k in module.conv3d.kernel_size)
        elif isinstance(module, MaxPool3dSame):
            padding = tuple((k - 1) // 2 for k in module.kernel_size)
            # unpadded (even-kernel) pools keep the last partial window, as "SAME" does
            pool = nn.MaxPool3d(module.kernel_size, module.stride, padding=padding, ceil_mode=not any(padding))
            parent_name, _, child = name.rpartition('.')
            setattr(sym.get_submodule(parent_name) if parent_name else sym, child, pool)
    return sym


def build_pair(name: str, size: int) -> Tuple[nn.Module, Optional[nn.Module], str]:
    """Our model, its reference with identical weights (``None`` when there is none), and a label.

    The I3D reference (symmetric padding) computes different outputs on purpose; every other
    reference computes the same function as ours.
    """
    torch.manual_seed(0)
    ours = fima_models.create_model(name, num_classes=400)
    if name == 'i3d':
        return ours, symmetric_padding_i3d(ours), 'i3d, symmetric padding'
    import torchvision.models.video as tvv
    if not hasattr(tvv, name):
        return ours, None, ''
    ref = getattr(tvv, name)()
    label = f'torchvision {name}'
    if name == 's3d' and size != 224:
        ref.avgpool = nn.AdaptiveAvgPool3d(1)
        label += ' (adaptive pool)'
    ref.load_state_dict(ours.state_dict())
    return ours, ref, label


def gflops_per_clip(name: str, frames: int, size: int) -> Tuple[float, float]:
    """(GFLOPs of one clip's forward, parameters in millions), counted on the meta device."""
    from torch.utils.flop_counter import FlopCounterMode
    with torch.device('meta'):
        model = fima_models.create_model(name, num_classes=400).eval()
        x = torch.empty(1, 3, frames, size, size)
    counter = FlopCounterMode(display=False)
    with counter, torch.no_grad():
        model(x)
    params = sum(p.numel() for p in model.parameters()) / 1e6
    return counter.get_total_flops() / 1e9, params


# ---------------------------------------------------------------------------------------------
# measurement
# ---------------------------------------------------------------------------------------------
def matmul_peak(device: torch.device, n: int = 2048, reps: int = 5, dtype: torch.dtype = torch.float32) -> float:
    """Best matmul GFLOP/s of ``reps`` ``n x n`` products in ``dtype``."""
    a, b = torch.randn(n, n, device=device, dtype=dtype), torch.randn(n, n, device=device, dtype=dtype)
    best = float('inf')
    for _ in range(reps + 1):
        sync(device)
        start = time.perf_counter()
        a @ b
        sync(device)
        best = min(best, time.perf_counter() - start)
    return 2 * n ** 3 / best / 1e9


def sync(device: torch.device) -> None:
    if device.type == 'cuda':
        torch.cuda.synchronize(device)


def _rss_mb(field: str) -> float:
    for line in Path('/proc/self/status').read_text().splitlines():
        if line.startswith(field + ':'):
            return int(line.split()[1]) / 1024
    return float('nan')


def peak_memory_mb(step: Callable[[], Any], device: torch.device) -> float:
    """Extra memory one ``step()`` needs at its peak (CUDA allocator, or resident set on Linux)."""
    if device.type == 'cuda':
        sync(device)
        torch.cuda.reset_peak_memory_stats(device)
        base = torch.cuda.memory_allocated(device)
        step()
        sync(device)
        return (torch.cuda.max_memory_allocated(device) - base) / 2 ** 20
    try:
        Path('/proc/self/clear_refs').write_text('5')  # reset the peak resident set (VmHWM)
    except OSError:
        return float('nan')
    base = _rss_mb('VmRSS')
    step()
    return _rss_mb('VmHWM') - base


def prepare(model: nn.Module, setting: str, device: torch.device, shape: Tuple[int, ...],
            train: bool) -> Tuple[Callable[[torch.Tensor], Any], bool]:
    """A callable running ``model`` under ``setting`` and whether inputs go channels-last."""
    model = model.to(device).train(train)
    if setting == 'channels_last':
        model.to(memory_format=torch.channels_last_3d)
        return model, True
    if setting in ('compile', 'compile_freeze'):
        return torch.compile(model, dynamic=False, options={'freezing': setting == 'compile_freeze'}), False
    if setting in ('fold', 'fold_cl'):
        plan = InferencePlan(str(device), channels_last=setting == 'fold_cl')
        return optimize_for_inference(model, device, shape, plan=plan, verify=False), plan.channels_last
    if setting in ('fast', 'fast_compile'):
        fast = optimize_for_inference(model, device, shape, compile=setting == 'fast_compile', verify=False)
        return fast, fast.inference_plan.channels_last
    if setting == 'bf16':
        def run(x: torch.Tensor) -> Any:
            with torch.autocast(device.type, dtype=torch.bfloat16):
                return model(x)
        return run, False
    return model, False


def bf16_available(device: torch.device) -> bool:
    """Whether ``device`` computes bfloat16 natively (the fast path's own rule)."""
    return plan_inference(device, precision='auto').precision == 'bf16'


#: The rows of the ``precisions`` setting, timed interleaved in one worker.
PRECISION_ROWS = ('fp32_fast', 'bf16_plan', 'bf16_plan_unfused', 'bf16_plan_compile', 'bf16_autocast')


def cpu_flags() -> Dict[str, bool]:
    """Whether the CPU has the bfloat16 instructions the bf16 plan relies on."""
    try:
        text = Path('/proc/cpuinfo').read_text()
    except OSError:
        return {}
    flags = set(next((line.split(':', 1)[1].split() for line in text.splitlines()
                      if line.startswith('flags')), []))
    return {flag: flag in flags for flag in ('avx512_bf16', 'amx_bf16', 'amx_tile', 'avx512f')}


def load_average() -> Optional[float]:
    """The 1-minute load average (the machine may be shared), ``None`` where unknown."""
    try:
        return os.getloadavg()[0]
    except OSError:
        return None


def precision_worker(cfg: Dict[str, Any]) -> Dict[str, Any]:
    """Per-precision rows of one model: fp32 fast path, bf16 plan (default, eager), bf16 plan compiled,
    bf16 autocast of the plain model; timed interleaved, with the fp32 and bf16 matmul peaks measured in
    the same process before and after, and the pooled features compared with plain fp32."""
    device = torch.device(cfg['device'])
    out: Dict[str, Any] = dict(cfg, cpu_flags=cpu_flags(), load_before=load_average())
    if cfg['setting'].endswith('+alloc'):
        out['allocator_configured'] = configure_allocator()
    if not bf16_available(device):
        out['skipped'] = f'{device.type} has no native bfloat16 (it would be emulated, ~100x slower)'
        return out
    shape = (cfg['batch'], 3, cfg['frames'], cfg['size'], cfg['size'])
    ours, _, _ = build_pair(cfg['model'], cfg['size'])
    ours = ours.eval().to(device)
    out['gflops_per_clip'], out['params_m'] = gflops_per_clip(cfg['model'], cfg['frames'], cfg['size'])
    peaks = {'fp32': [matmul_peak(device)], 'bf16': [matmul_peak(device, dtype=torch.bfloat16)]}
    torch.manual_seed(1)
    x = torch.randn(shape, device=device)
    with torch.inference_mode():
        ref = ours.forward_features(x).float().mean((2, 3, 4))
    runs: Dict[str, Callable[[], Any]] = {}
    setup: Dict[str, float] = {}
    for row in cfg.get('rows') or PRECISION_ROWS:
        start = time.perf_counter()
        if row == 'bf16_autocast':
            def run() -> Any:
                with torch.inference_mode(), torch.autocast(device.type, dtype=torch.bfloat16):
                    return ours.forward_features(x).float()
        else:
            plan = plan_inference(device, precision='fp32' if row == 'fp32_fast' else 'bf16',
                                  compile=row == 'bf16_plan_compile')
            if row == 'bf16_plan_unfused':
                plan = replace(plan, fuse_onednn=False, factorise_convs=True)
            fast = optimize_for_inference(ours, device, shape, plan=plan, verify=False)
            xin = x.contiguous(memory_format=torch.channels_last_3d)

            def run(fast: nn.Module = fast, xin: torch.Tensor = xin) -> Any:
                with torch.inference_mode():
                    return fast.forward_features(xin).float()
            out.setdefault('plans', {})[row] = fast.inference_plan.describe()
        pooled = run().mean((2, 3, 4))  # warm-up; compiles where the plan compiles
        setup[row] = time.perf_counter() - start
        cosine = F.cosine_similarity(pooled.double(), ref.double(), dim=1)
        out.setdefault('accuracy', {})[row] = {
            'min_cosine': cosine.min().item(),
            'max_rel_err': ((pooled - ref).abs().max() / ref.abs().max()).item()}
        runs[row] = run
    times: Dict[str, List[float]] = {row: [] for row in runs}
    for _ in range(cfg['iters']):
        for row, run in runs.items():
            start = time.perf_counter()
            run()
            times[row].append(time.perf_counter() - start)
    peaks['fp32'].append(matmul_peak(device))
    peaks['bf16'].append(matmul_peak(device, dtype=torch.bfloat16))
    out['matmul_peak_gflops'] = max(peaks['fp32'])
    out['bf16_matmul_peak_gflops'] = max(peaks['bf16'])
    out['peaks_measured'] = peaks
    out['load_after'] = load_average()
    fp32_cps = cfg['batch'] / statistics.median(times['fp32_fast'])
    for row in runs:
        cps = cfg['batch'] / statistics.median(times[row])
        achieved = out['gflops_per_clip'] * cps
        # the fastest step is the least disturbed one on a shared machine: reported beside the median
        best_cps = cfg['batch'] / min(times[row])
        out[row] = {'clips_per_s': cps, 'times_s': times[row], 'setup_s': setup[row],
                    'clips_per_s_best': best_cps,
                    'best_speedup_vs_fp32_fast': best_cps / (cfg['batch'] / min(times['fp32_fast'])),
                    'speedup_vs_fp32_fast': cps / fp32_cps, 'achieved_gflops': achieved,
                    'frac_of_fp32_peak': achieved / out['matmul_peak_gflops'],
                    'frac_of_bf16_peak': achieved / out['bf16_matmul_peak_gflops'],
                    **out['accuracy'][row]}
    return out


def precision_markdown(results: List[Dict[str, Any]]) -> str:
    """The ``precisions`` rows as one markdown table."""
    header = ('model', 'clip', 'batch', 'row', 'clips/s', 'x fp32 fast', 'of fp32 peak', 'of bf16 peak',
              'best clips/s', 'best x fp32 fast', 'min cosine', 'max rel err', 'setup s', 'load')
    rows = ['| ' + ' | '.join(header) + ' |', '|' + '---|' * len(header)]
    for r in results:
        if str(r.get('setting')).split('+')[0] != 'precisions' or 'fp32_fast' not in r:
            continue
        for row in (row for row in PRECISION_ROWS if row in r):
            o = r[row]
            rows.append('| ' + ' | '.join([
                r['model'], f"{r['frames']}x{r['size']}", str(r['batch']), row, f"{o['clips_per_s']:.2f}",
                f"{o['speedup_vs_fp32_fast']:.2f}", f"{o['frac_of_fp32_peak']:.2f}", f"{o['frac_of_bf16_peak']:.2f}",
                _fmt(o.get('clips_per_s_best'), '.2f'), _fmt(o.get('best_speedup_vs_fp32_fast'), '.2f'),
                f"{o['min_cosine']:.5f}", f"{o['max_rel_err']:.2g}", f"{o['setup_s']:.0f}",
                f"{r['load_before']:.1f}-{r['load_after']:.1f}"]) + ' |')
    return '\n'.join(rows)


def worker(cfg: Dict[str, Any]) -> Dict[str, Any]:
    """Measure ours and the reference for one (model, shape, batch, mode, setting)."""
    if cfg['setting'].split('+')[0] == 'precisions':
        return precision_worker(cfg)
    setting, alloc = cfg['setting'].split('+')[0], cfg['setting'].endswith('+alloc')
    device = torch.device(cfg['device'])
    out: Dict[str, Any] = dict(cfg)
    if alloc:
        out['allocator_configured'] = configure_allocator()
    if setting == 'bf16' and not bf16_available(device):
        out['skipped'] = f'{device.type} has no native bfloat16 (it would be emulated, ~100x slower)'
        return out
    train = cfg['mode'] == 'train'
    shape = (cfg['batch'], 3, cfg['frames'], cfg['size'], cfg['size'])
    ours, ref, ref_label = build_pair(cfg['model'], cfg['size'])
    out['reference'] = ref_label or None
    out['gflops_per_clip'], out['params_m'] = gflops_per_clip(cfg['model'], cfg['frames'], cfg['size'])
    out['matmul_peak_gflops'] = matmul_peak(device)
    torch.manual_seed(1)
    x = torch.randn(shape, device=device)
    target = torch.randint(0, 400, (cfg['batch'],), device=device)
    impls = {'ours': ours} if ref is None else {'ours': ours, 'ref': ref}
    if cfg.get('baseline') and setting != 'fp32':
        impls['base'] = copy.deepcopy(ours)  # our plain fp32 model, timed alongside
    steps: Dict[str, Callable[[], Any]] = {}
    setup: Dict[str, float] = {}
    first: Dict[str, Any] = {}
    for key, model in impls.items():
        start = time.perf_counter()
        fn, channels_last = prepare(model, 'fp32' if key == 'base' else setting, device, shape, train)
        xin = x.contiguous(memory_format=torch.channels_last_3d) if channels_last else x
        if train:
            opt = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9)

            def step(fn: Callable = fn, xin: torch.Tensor = xin, opt: torch.optim.Optimizer = opt) -> Any:
                opt.zero_grad(set_to_none=True)
                loss = F.cross_entropy(fn(xin), target)
                loss.backward()
                opt.step()
                return loss.detach()
        else:
            def step(fn: Callable = fn, xin: torch.Tensor = xin) -> Any:
                with torch.inference_mode():
                    return fn(xin)
        first[key] = step()  # warm-up; compiles where the setting compiles
        sync(device)
        setup[key] = time.perf_counter() - start
        steps[key] = step
    if not train and 'ref' in first and cfg['model'] != 'i3d':
        out['ref_mismatch'] = output_mismatch(first['ours'], first['ref'])
    times: Dict[str, List[float]] = {key: [] for key in steps}
    for _ in range(cfg['iters']):
        for key, step in steps.items():
            sync(device)
            start = time.perf_counter()
            step()
            sync(device)
            times[key].append(time.perf_counter() - start)
    for key, step in steps.items():
        median = statistics.median(times[key])
        out[key] = {
            'step_s': median, 'times_s': times[key], 'clips_per_s': cfg['batch'] / median,
            'setup_s': setup[key], 'peak_mem_mb': peak_memory_mb(step, device),
            'achieved_gflops': out['gflops_per_clip'] * cfg['batch'] / median * (3 if train else 1),
        }
    if 'ref' in out:
        out['ratio'] = out['ours']['clips_per_s'] / out['ref']['clips_per_s']
    if 'base' in out:
        out['speedup_vs_fp32_same_process'] = out['ours']['clips_per_s'] / out['base']['clips_per_s']
    return out


# ---------------------------------------------------------------------------------------------
# driver
# ---------------------------------------------------------------------------------------------
def run_worker(cfg: Dict[str, Any], timeout: float) -> Dict[str, Any]:
    """Run :func:`worker` in a fresh process (allocator settings are process-wide)."""
    env = {**os.environ, 'PYTHONPATH': os.pathsep.join(filter(None, [str(REPO), os.environ.get('PYTHONPATH')]))}
    try:
        proc = subprocess.run([sys.executable, __file__, '--worker', json.dumps(cfg)], env=env,
                              capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return {**cfg, 'error': f'timed out after {timeout:.0f} s'}
    lines = [line for line in proc.stdout.splitlines() if line.startswith('{')]
    if proc.returncode != 0 or not lines:
        return {**cfg, 'error': (proc.stderr or proc.stdout).strip().splitlines()[-1:] or ['no output']}
    return json.loads(lines[-1])


def add_relative(results: List[Dict[str, Any]], peak: float) -> None:
    """Fraction of the matmul peak, and speed-up over our own ``fp32`` row of the same configuration."""
    base = {(r['model'], r['mode'], r['batch'], r['frames'], r['size']): r['ours']['clips_per_s']
            for r in results if r.get('setting') == 'fp32' and 'ours' in r}
    for r in results:
        for key in ('ours', 'ref', 'base'):
            if key in r:
                r[key]['frac_of_peak'] = r[key]['achieved_gflops'] / peak
        fp32 = base.get((r['model'], r['mode'], r['batch'], r['frames'], r['size']))
        if 'ours' in r and fp32:
            r['speedup_vs_ours_fp32'] = r['ours']['clips_per_s'] / fp32


def _fmt(value: Optional[float], spec: str) -> str:
    return '-' if value is None else format(value, spec)


def markdown(results: List[Dict[str, Any]]) -> str:
    """The results as one markdown table."""
    header = ('model', 'mode', 'clip', 'batch', 'setting', 'ours clips/s', 'ref clips/s', 'ours/ref',
              'x ours fp32', 'x fp32 same proc', 'ours GFLOP/s', 'of peak', 'ours peak MB', 'ref peak MB', 'setup s (ours)')
    rows = ['| ' + ' | '.join(header) + ' |', '|' + '---|' * len(header)]
    for r in results:
        if str(r.get('setting')).split('+')[0] == 'precisions':
            continue  # in precision_markdown
        cells = [r['model'], r['mode'], f"{r['frames']}x{r['size']}", str(r['batch']), r['setting']]
        if 'error' in r or 'skipped' in r:
            cells += [str(r.get('error') or r.get('skipped'))] + [''] * (len(header) - len(cells) - 1)
        else:
            o, f = r['ours'], r.get('ref', {})
            cells += [_fmt(o['clips_per_s'], '.2f'), _fmt(f.get('clips_per_s'), '.2f'), _fmt(r.get('ratio'), '.2f'),
                      _fmt(r.get('speedup_vs_ours_fp32'), '.2f'), _fmt(r.get('speedup_vs_fp32_same_process'), '.2f'),
                      _fmt(o['achieved_gflops'], '.0f'),
                      _fmt(o.get('frac_of_peak'), '.2f'), _fmt(o['peak_mem_mb'], '.0f'),
                      _fmt(f.get('peak_mem_mb'), '.0f'), _fmt(o['setup_s'], '.1f')]
        rows.append('| ' + ' | '.join(cells) + ' |')
    return '\n'.join(rows)


def model_table(results: List[Dict[str, Any]]) -> str:
    """Parameters and GFLOPs per clip of each measured model and clip shape."""
    seen = {}
    for r in results:
        if 'params_m' in r:
            seen[(r['model'], r['frames'], r['size'])] = (r['params_m'], r['gflops_per_clip'], r.get('reference'))
    rows = ['| model | clip | params (M) | GFLOPs / clip | reference |', '|---|---|---|---|---|']
    for (model, frames, size), (params, gflops, ref) in seen.items():
        rows.append(f'| {model} | {frames}x{size} | {params:.2f} | {gflops:.1f} | {ref or "-"} |')
    return '\n'.join(rows)


def parse_size(text: str) -> Tuple[int, int]:
    frames, size = text.lower().split('x')
    return int(frames), int(size)


def main(argv: Optional[List[str]] = None) -> int:
    """Run the sweep; returns 1 when a worker failed."""
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('--models', nargs='+', default=list(MODELS), choices=MODELS)
    parser.add_argument('--sizes', nargs='+', default=['16x112'], help='clip shapes TxS, e.g. 16x112 16x224')
    parser.add_argument('--batches', nargs='+', type=int, default=[8])
    parser.add_argument('--modes', nargs='+', default=['infer'], choices=('infer', 'train'))
    parser.add_argument('--settings', nargs='+', default=['fp32', 'channels_last', 'fast'],
                        help=f'from {", ".join(SETTINGS)}, each optionally with +alloc')
    parser.add_argument('--device', default=None, help='cpu or cuda (default: cuda when available)')
    parser.add_argument('--iters', type=int, default=3, help='timed steps per implementation')
    parser.add_argument('--rows', nargs='+', choices=PRECISION_ROWS, default=None,
                        help='rows of the precisions setting (default: all; fp32_fast is always timed)')
    parser.add_argument('--baseline', action='store_true',
                        help='also time our plain fp32 model in every worker (side-by-side speed-up)')
    parser.add_argument('--timeout', type=float, default=1800, help='seconds per worker')
    parser.add_argument('--json', type=Path, default=None, help='write the results here')
    parser.add_argument('--worker', default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format='%(levelname)s %(name)s: %(message)s')
    if args.worker:
        print(json.dumps(worker(json.loads(args.worker))))
        return 0
    for setting in args.settings:
        if setting.split('+')[0] not in SETTINGS or setting.count('+') > 1 or (
                '+' in setting and not setting.endswith('+alloc')):
            parser.error(f'unknown setting {setting!r}')
    device = args.device or ('cuda' if torch.cuda.is_available() else 'cpu')
    results = []
    started = time.strftime('%Y-%m-%dT%H:%M:%S')
    for mode in args.modes:
        for name in args.models:
            for frames, size in map(parse_size, args.sizes):
                for batch in args.batches:
                    for setting in args.settings:
                        if mode == 'train' and setting.split('+')[0] not in TRAIN_SETTINGS:
                            continue
                        cfg = dict(model=name, mode=mode, frames=frames, size=size, batch=batch,
                                   setting=setting, device=device, iters=args.iters,
                                   rows=sorted(set(args.rows) | {'fp32_fast'}, key=PRECISION_ROWS.index)
                                   if args.rows else None,
                                   baseline=args.baseline)
                        result = run_worker(cfg, args.timeout)
                        results.append(result)
                        status = result.get('error') or result.get('skipped') or (', '.join(
                            f"{row} {result[row]['clips_per_s']:.2f}" for row in PRECISION_ROWS if row in result)
                            if setting.split('+')[0] == 'precisions' else None) or \
                            f"ours {result['ours']['clips_per_s']:.2f} clips/s" + (
                                f", ref {result['ref']['clips_per_s']:.2f}, ratio {result['ratio']:.2f}"
                                if 'ref' in result else '')
                        print(f'{mode} {name} {frames}x{size} b{batch} {setting}: {status}', flush=True)
    peaks = [r['matmul_peak_gflops'] for r in results if 'matmul_peak_gflops' in r]
    peak = statistics.median(peaks) if peaks else float('nan')
    add_relative(results, peak)
    info = dict(machine_info(device), cpu_flags=cpu_flags())
    print(f"\nmachine: {info['cpu']} ({info['cpu_count']} CPUs, {info['torch_threads']} torch threads)"
          f"{', ' + info['gpu'] if 'gpu' in info else ''}; python {info['python']}, torch {info['torch']}, "
          f"timm {info['timm']}; matmul peak {peak:.0f} GFLOP/s (median of {len(peaks)} workers)\n")
    print(model_table(results) + '\n')
    print(markdown(results))
    if any(str(r.get('setting')).split('+')[0] == 'precisions' for r in results):
        print('\n' + precision_markdown(results))
    mismatches = [r['ref_mismatch'] for r in results if 'ref_mismatch' in r]
    if mismatches:
        print(f'\nlargest ours-vs-reference output difference: {max(mismatches):.2g} (relative)')
    ratios = [r['ratio'] for r in results if 'ratio' in r]
    if ratios:
        print(f'median ours/ref ratio: {statistics.median(ratios):.3f} over {len(ratios)} settings')
    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({
            'machine': info, 'started': started, 'matmul_peak_gflops': peak, 'peaks': peaks,
            'args': {k: v for k, v in vars(args).items() if k not in ('json', 'worker')},
            'results': results}, indent=1, default=str))
    failed = [r for r in results if 'error' in r]
    for r in failed:
        print(f"FAILED {r['model']} {r['setting']}: {r['error']}", file=sys.stderr)
    bad = [r for r in results if r.get('ref_mismatch', 0) > MAX_REF_MISMATCH]
    for r in bad:
        print(f"MISMATCH {r['model']} {r['setting']}: ours vs reference {r['ref_mismatch']:.2g}", file=sys.stderr)
    return 1 if failed or bad else 0


if __name__ == '__main__':
    sys.exit(main())
