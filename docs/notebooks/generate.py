# ruff: noqa: E501  (the Japanese prose: ruff counts each wide character as two columns)
"""Write the study-note notebooks, Japanese and English twins, from one description.

    python docs/notebooks/generate.py          # (re)write docs/notebooks/*.ipynb
    python docs/notebooks/generate.py --check  # exit 1 if a committed notebook is stale

Each notebook is a list of cells. A Markdown cell holds its text in both languages; a code
cell is the same code in both (so the twins compute the same things), except the few cells
marked per language (the Japanese font for plots). Exercises are Markdown cells followed by an
empty cell for the reader's own attempt and an answer cell, collapsed in Jupyter
(``source_hidden``) and tagged ``answer``. The notebooks are committed without outputs; the
test suite runs them (tests/test_notebooks.py) and checks that this script reproduces them.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, field
from pathlib import Path

import nbformat

HERE = Path(__file__).resolve().parent
LANGUAGES = ("ja", "en")


@dataclass(frozen=True)
class Md:
    ja: str
    en: str


@dataclass(frozen=True)
class Code:
    source: str | dict[str, str]
    answer: bool = False


@dataclass(frozen=True)
class Exercise:
    """A question, an empty cell for the reader, and the answer (code and/or Markdown)."""

    ja: str
    en: str
    code: str = ""
    answer_ja: str = ""
    answer_en: str = ""


@dataclass
class Notebook:
    name: str
    title: Md
    cells: list = field(default_factory=list)


SETUP = Code({
    "ja": """\
import matplotlib.pyplot as plt
import matplotlib_fontja  # noqa: F401  (グラフに日本語を表示するフォント)
import numpy as np

import lstmkit

np.set_printoptions(precision=4, suppress=False)""",
    "en": """\
import matplotlib.pyplot as plt
import numpy as np

import lstmkit

np.set_printoptions(precision=4, suppress=False)""",
})

LINKS = Md(
    ja="ガイド：[guide.ja.md](../guide.ja.md)（数式・コード・実行結果）、実験："
       "[experiments.md](../experiments.md)、文字単位の言語モデル：[charlm.md](../charlm.md)。"
       "English: [{name}.en.ipynb]({name}.en.ipynb)",
    en="Guide: [guide.md](../guide.md) (equations, code, outputs); experiments: "
       "[experiments.md](../experiments.md); character language models: "
       "[charlm.md](../charlm.md). 日本語版: [{name}.ja.ipynb]({name}.ja.ipynb)",
)

# -- notebook 1: 勾配消失、勾配爆発と勾配クリッピング、CEC、シグモイド関数の微分 -----------------

GRADIENTS = Notebook(
    name="01_gradients",
    title=Md(
        ja="# 1. 勾配消失・勾配爆発・勾配クリッピング・CEC\n\n"
           "E資格の学習ノート（「深層学習 Day3」、LSTM の節）の前半を、lstmkit で動かしながら"
           "たどります。RNN の勾配消失、勾配爆発と勾配クリッピング（ノートの演習コードとその誤り）、"
           "CEC、シグモイド関数の微分の上限 0.25 です。各節の最後に練習問題があります。"
           "解答のセルは折りたたんであります（Jupyter でセルの左端をクリックすると開きます）。"
           "上から順に実行してください（2コアのマシンで1分ほどです）。",
        en="# 1. Vanishing and exploding gradients, clipping, the CEC\n\n"
           "The first half of the E資格 study note's LSTM section (\"Deep Learning Day 3\"), run "
           "with lstmkit: the RNN's vanishing gradient, exploding gradients and clipping (the "
           "note's exercise code and its slips), the CEC, and the sigmoid derivative's bound "
           "0.25. Each section ends with exercises; the answer cells are collapsed (click the "
           "bar left of a cell in Jupyter to open it). Run the cells from the top (about a "
           "minute on two cores).",
    ),
)
GRADIENTS.cells = [
    LINKS,
    SETUP,
    Md(
        ja="## 1.1 RNN の勾配消失\n\n"
           "単純 RNN は $h_t = \\tanh(W_{ih} x_t + b_{ih} + W_{hh} h_{t-1} + b_{hh})$ です。"
           "BPTT で勾配を1ステップ戻すたびに\n\n"
           "$$\\frac{\\partial L}{\\partial h_{t-1}} = W_{hh}^\\top \\Big( (1 - h_t^2) \\odot "
           "\\frac{\\partial L}{\\partial h_t} \\Big)$$\n\n"
           "が掛かります（ノートには逆伝播の式は書かれていません。これは標準的な導出です）。"
           "$W_{hh}$ の特異値がすべて `scale` で、tanh がほぼ線形な範囲にあれば、1ステップごとに"
           "勾配はおよそ `scale` 倍になります。",
        en="## 1.1 The RNN's vanishing gradient\n\n"
           "The simple RNN computes $h_t = \\tanh(W_{ih} x_t + b_{ih} + W_{hh} h_{t-1} + "
           "b_{hh})$. Backpropagation through time carries the gradient one step back with\n\n"
           "$$\\frac{\\partial L}{\\partial h_{t-1}} = W_{hh}^\\top \\Big( (1 - h_t^2) \\odot "
           "\\frac{\\partial L}{\\partial h_t} \\Big)$$\n\n"
           "(the note gives no formula for the backward pass; this is the standard derivation). "
           "With every singular value of $W_{hh}$ equal to `scale` and tanh near its linear "
           "range, each step back multiplies the gradient by about `scale`.",
    ),
    Code("""\
def grad_to_first_input(scale, T, seed=0):
    \"\"\"||dL/dx_0|| for L = sum(h_T): W_hh orthogonal times scale, no bias, tiny inputs.\"\"\"
    rnn = lstmkit.RNN(4, 16, dtype="float64", seed=seed, recurrent_init="orthogonal")
    rnn.params["weight_hh_l0"] *= scale
    for name in ("bias_ih_l0", "bias_hh_l0"):
        rnn.params[name][...] = 0.0
    x = 1e-3 * np.random.default_rng(seed).standard_normal((T, 1, 4))  # (T, B, D)
    out, _ = rnn(x)
    d_out = np.zeros_like(out)
    d_out[-1] = 1.0  # L = sum(h_T)
    dx, _ = rnn.backward(d_out)
    return np.linalg.norm(dx[0])


for scale in (0.5, 1.0, 1.5):
    print(f"scale {scale}:", "  ".join(
        f"T={T}: {grad_to_first_input(scale, T):.2e}" for T in (5, 10, 20)))"""),
    Md(
        ja="初期化直後の RNN と LSTM で、損失から何ステップさかのぼると勾配がどれだけ残るかを"
           "図にします（`lstmkit.diagnostics.gradient_flow`）。LSTM はセル状態の勾配 "
           "$\\|\\partial L / \\partial c_t\\|$ を見ます。",
        en="The gradient left after going back k steps from the loss, for an RNN and LSTMs at "
           "initialisation (`lstmkit.diagnostics.gradient_flow`); for the LSTM, the cell "
           "state's gradient $\\|\\partial L / \\partial c_t\\|$.",
    ),
    Code({
        "ja": """\
from lstmkit.diagnostics import gradient_flow

T = 100
x = np.random.default_rng(0).standard_normal((T, 1, 8))
curves = {
    "RNN（tanh）：||dL/dh_t||":
        gradient_flow(lstmkit.RNN(8, 32, dtype="float64", seed=0), x).dh_norm,
    "LSTM（初期化直後）：||dL/dc_t||":
        gradient_flow(lstmkit.LSTM(8, 32, dtype="float64", seed=0), x).dc_norm,
    "忘却ゲートなしの LSTM（CEC）：||dL/dc_t||":
        gradient_flow(lstmkit.LSTM(8, 32, forget_gate=False, dtype="float64", seed=0), x).dc_norm,
}
fig, ax = plt.subplots(figsize=(7, 3.5))
for label, norm in curves.items():
    ax.semilogy(np.arange(T), norm[::-1] / norm[-1], label=label)
ax.set_xlabel("損失からさかのぼったステップ数")
ax.set_ylabel("勾配のノルム（相対）")
ax.legend(fontsize=8)
plt.show()""",
        "en": """\
from lstmkit.diagnostics import gradient_flow

T = 100
x = np.random.default_rng(0).standard_normal((T, 1, 8))
curves = {
    "RNN (tanh): ||dL/dh_t||":
        gradient_flow(lstmkit.RNN(8, 32, dtype="float64", seed=0), x).dh_norm,
    "LSTM at initialisation: ||dL/dc_t||":
        gradient_flow(lstmkit.LSTM(8, 32, dtype="float64", seed=0), x).dc_norm,
    "LSTM without forget gate (CEC): ||dL/dc_t||":
        gradient_flow(lstmkit.LSTM(8, 32, forget_gate=False, dtype="float64", seed=0), x).dc_norm,
}
fig, ax = plt.subplots(figsize=(7, 3.5))
for label, norm in curves.items():
    ax.semilogy(np.arange(T), norm[::-1] / norm[-1], label=label)
ax.set_xlabel("steps back from the loss")
ax.set_ylabel("gradient norm (relative)")
ax.legend(fontsize=8)
plt.show()""",
    }),
    Exercise(
        ja="### 練習問題 1\n\n$W_{hh}$ の特異値を 0.9 にすると、系列長 T = 10 から T = 30 までの"
           "20ステップで、勾配はおよそ何倍になるでしょうか。まず手で見積もり、"
           "`grad_to_first_input` で確かめてください。",
        en="### Exercise 1\n\nWith the singular values of $W_{hh}$ at 0.9, by about what factor "
           "does the gradient change over the 20 steps from T = 10 to T = 30? Estimate it by "
           "hand, then check with `grad_to_first_input`.",
        code="""\
from lstmkit.diagnostics import gradient_flow

rnn = lstmkit.RNN(4, 16, dtype="float64", seed=0, recurrent_init="orthogonal")
rnn.params["weight_hh_l0"] *= 0.9
for name in ("bias_ih_l0", "bias_hh_l0"):
    rnn.params[name][...] = 0.0
x = 1e-3 * np.random.default_rng(0).standard_normal((30, 1, 4))
dh = gradient_flow(rnn, x).dh_norm  # ||dL/dh_t|| for L = sum(h_29), t = 0..29
print(f"estimate 0.9**20 = {0.9**20:.4f}")
print(f"||dL/dh_9|| / ||dL/dh_29|| = {dh[9] / dh[29]:.4f}")
ratio = grad_to_first_input(0.9, 30) / grad_to_first_input(0.9, 10)
print(f"||dL/dx_0|| ratio between T=30 and T=10 = {ratio:.4f}")""",
        answer_ja="見積もりは $0.9^{20} \\approx 0.12$ です。隠れ状態の勾配 "
                  "$\\|\\partial L / \\partial h_t\\|$ は、20ステップさかのぼると、有効数字4桁でこの倍率に"
                  "なります（$W_{hh}$ は直交行列の 0.9 倍なので、ベクトルの長さを毎回ちょうど 0.9 倍にします。また、入力が小さいので"
                  "tanh はほぼ線形です）。`grad_to_first_input` の比（約 0.06）がこれと違うのは、最後に入力の重み "
                  "$W_{ih}^\\top$ を掛けるときの勾配の向きが T によって違い、射影した長さが変わるからです。"
                  "いずれにしても、1ステップの因子が1より少し小さいだけで、長い系列では勾配が消えていきます。",
        answer_en="The estimate is $0.9^{20} \\approx 0.12$. The hidden state's gradient "
                  "$\\|\\partial L / \\partial h_t\\|$ shrinks by this factor over 20 steps, to four "
                  "digits "
                  "($W_{hh}$ is 0.9 times an orthogonal matrix, so it scales every vector's length "
                  "by 0.9, and tanh is nearly linear here). The ratio of `grad_to_first_input` "
                  "(about 0.06) differs: the last product with the input weights $W_{ih}^\\top$ "
                  "projects a gradient whose direction depends on T. Either way, a factor per "
                  "step only slightly below 1 makes the gradient vanish over long sequences.",
    ),
    Md(
        ja="## 1.2 勾配爆発と勾配クリッピング\n\n"
           "因子が1を超えると、勾配は指数関数的に大きくなります（勾配爆発）。勾配クリッピングは、"
           "勾配のノルムがしきい値を超えたとき、ノルムがしきい値に等しくなるように勾配を縮めます。"
           "ノートの演習チャレンジのコードです。",
        en="## 1.2 Exploding gradients and clipping\n\n"
           "Factors above 1 make the gradient grow geometrically (it explodes). Clipping rescales "
           "a gradient whose norm exceeds a threshold so that its norm equals the threshold. The "
           "note's exercise code:",
    ),
    Code("""\
def gradient_clipping(grad, threshold):
    norm = np.linalg.norm(grad)
    rate = threshold / norm
    if rate < 1:
        return grad * rate
    return grad


grad = np.array([6.0, 8.0])  # norm 10
clipped = gradient_clipping(grad, 5.0)
print(clipped, np.linalg.norm(clipped))"""),
    Md(
        ja="このコードのまわりには、誤りが2か所あります。\n\n"
           "- ノートに記録された講義の模範解答は `gradient * rate` を返していますが、変数名は `grad` です"
           "（`gradient` は定義されていないので `NameError` になります）。\n"
           "- ノートで「わかりやすく」書き直したコードには3つの誤りがあります。しきい値の変数名が"
           "引数と違うつづり（`threshhold`）になっていること、`rate` を計算したのに使っていないこと、"
           "そして `norm / threshold` を掛けていることです。クリッピングが働くのは "
           "`norm > threshold` のときなので、`norm / threshold` は1より大きく、勾配を縮めるどころか"
           "**大きく**します。\n\n"
           "同じ3つの誤りをもつコードを書いて、実際に確かめます。",
        en="There are two slips around this code.\n\n"
           "- The lecture's model answer, as the note records it, returns `gradient * rate`, "
           "where the variable is `grad` (`gradient` is not defined: a `NameError`).\n"
           "- The note's \"clearer\" rewrite has three slips: the threshold is spelt differently "
           "from the parameter (`threshhold`), `rate` is computed and then not used, and it "
           "multiplies by `norm / threshold`. Clipping happens when `norm > threshold`, so "
           "`norm / threshold` is above 1: the rewrite **enlarges** the gradient.\n\n"
           "A function with the same three slips, run:",
    ),
    Code("""\
def rewrite_with_the_slips(grad, threshold):
    norm = np.linalg.norm(grad)
    rate = threshold / norm  # noqa: F841  (computed, never used)
    if norm > threshhold:  # noqa: F821  (misspelt: NameError)
        return grad * (norm / threshold)
    return grad


try:
    rewrite_with_the_slips(grad, 5.0)
except NameError as error:
    print("NameError:", error)

# With the spelling fixed, the factor norm / threshold still enlarges the gradient:
norm = np.linalg.norm(grad)
print("norm / threshold:", grad * (norm / 5.0), "norm", np.linalg.norm(grad * (norm / 5.0)))"""),
    Md(
        ja="ノートが指摘するとおり、先に `rate` を求めておくと、同じ rate で**すべての**"
           "パラメータの勾配をまとめて縮められます。このときのノルムは全パラメータをひとつの"
           "ベクトルとみたノルム（グローバルノルム）で、更新全体の向きが変わりません。"
           "`lstmkit.clip_grad_norm` はこの方式です（`torch.nn.utils.clip_grad_norm_` と同じ）。",
        en="As the note observes, computing `rate` first lets one rate scale **all** parameters' "
           "gradients at once. The norm is then the global norm over all parameters, and the "
           "update keeps its direction. `lstmkit.clip_grad_norm` does this (as "
           "`torch.nn.utils.clip_grad_norm_` does).",
    ),
    Code("""\
grads = {"weight_ih_l0": np.full((2, 2), 3.0), "weight_hh_l0": np.full((2, 2), 4.0)}
before = lstmkit.clip_grad_norm(grads, max_norm=5.0)
print(f"global norm {before:.4f} -> {lstmkit.clip.total_norm(grads):.4f}")
print(grads["weight_ih_l0"][0, 0], grads["weight_hh_l0"][0, 0])"""),
    Exercise(
        ja="### 練習問題 2\n\n勾配の辞書 `grads` を受け取り、グローバルノルムがしきい値を超えて"
           "いれば、すべての勾配に同じ `rate` を掛けて返す関数 `clip_global(grads, threshold)` を"
           "書いてください。結果を `lstmkit.clip_grad_norm` と比べましょう（lstmkit はゼロ除算を"
           "防ぐため、ノルムに 1e-6 を足してから割ります）。",
        en="### Exercise 2\n\nWrite `clip_global(grads, threshold)`: given a dict of gradients, "
           "if their global norm exceeds the threshold, multiply every gradient by the same "
           "`rate`. Compare with `lstmkit.clip_grad_norm` (which divides by the norm plus 1e-6, "
           "against division by zero).",
        code="""\
def clip_global(grads, threshold):
    norm = np.sqrt(sum(np.sum(g**2) for g in grads.values()))
    rate = threshold / norm
    if rate < 1:
        return {name: g * rate for name, g in grads.items()}
    return grads


rng = np.random.default_rng(0)
grads = {"a": rng.standard_normal((3, 4)), "b": rng.standard_normal(5)}
mine = clip_global(grads, 1.0)
theirs = {name: g.copy() for name, g in grads.items()}
lstmkit.clip_grad_norm(theirs, max_norm=1.0)
print(all(np.allclose(mine[n], theirs[n]) for n in grads), lstmkit.clip.total_norm(mine))""",
    ),
    Md(
        ja="勾配爆発する RNN（特異値 1.5）で、クリッピングの前後と、書き直した式のノルムを"
           "比べます。",
        en="An exploding RNN (singular values 1.5): the norm before clipping, after the "
           "exercise's clipping, and after the rewrite's factor.",
    ),
    Code("""\
def exploding_grads(T):
    rnn = lstmkit.RNN(4, 16, dtype="float64", seed=0, recurrent_init="orthogonal")
    rnn.params["weight_hh_l0"] *= 1.5
    for name in ("bias_ih_l0", "bias_hh_l0"):
        rnn.params[name][...] = 0.0
    x = 1e-3 * np.random.default_rng(0).standard_normal((T, 1, 4))
    out, _ = rnn(x)
    d_out = np.zeros_like(out)
    d_out[-1] = 1.0
    rnn.backward(d_out)
    return rnn.grads


for T in (5, 10, 20):
    grads = exploding_grads(T)
    before = lstmkit.clip.total_norm(grads)
    lstmkit.clip_grad_norm(grads, max_norm=1.0)
    print(f"T={T}: before {before:.2e}, clipped {lstmkit.clip.total_norm(grads):.3f},",
          f"rewrite {before * before / 1.0:.2e}")"""),
    Md(
        ja="## 1.3 CEC（Constant Error Carousel）\n\n"
           "勾配消失への答えは、1ステップあたりの因子をちょうど1にすることです。自己結合の重みが1で"
           "活性化関数が恒等関数のユニット $c_t = c_{t-1} + a_t$ は、"
           "$\\partial c_t / \\partial c_{t-1} = 1$ なので、誤差を何ステップでもそのまま過去へ"
           "伝えます。これが CEC です。lstmkit の LSTM には忘却ゲートがあり、"
           "$c_t = f_t \\odot c_{t-1} + i_t \\odot g_t$、つまり CEC に沿った因子は $f_t$ です。"
           "`forget_gate=False` とすると $f_t = 1$ で、1997年の CEC そのものになります。\n\n"
           "$W_{hh} = 0$ として CEC 以外に過去へ戻る経路をなくし、$L = \\sum c_T$ の勾配が "
           "$c_0$ にどれだけ届くかを見ます。",
        en="## 1.3 The Constant Error Carousel (CEC)\n\n"
           "The answer to the vanishing gradient: make the factor per step exactly 1. A unit "
           "with a self-connection of weight 1 and the identity as activation, "
           "$c_t = c_{t-1} + a_t$, has $\\partial c_t / \\partial c_{t-1} = 1$ and carries the "
           "error back unchanged for any number of steps: the CEC. lstmkit's LSTM has the "
           "forget gate, $c_t = f_t \\odot c_{t-1} + i_t \\odot g_t$, so the factor along the "
           "carousel is $f_t$; `forget_gate=False` sets $f_t = 1$, the CEC of 1997.\n\n"
           "With $W_{hh} = 0$ no other path leads back; how much of the gradient of "
           "$L = \\sum c_T$ reaches $c_0$?",
    ),
    Code("""\
T = 100
x = np.random.default_rng(0).standard_normal((T, 1, 3))
for options in ({"forget_gate": False}, {}, {"forget_bias": 5.0}):
    lstm = lstmkit.LSTM(3, 4, dtype="float64", seed=0, **options)
    lstm.params["weight_hh_l0"][...] = 0.0
    out, (h_n, c_n) = lstm(x)
    _, (dh_0, dc_0) = lstm.backward(np.zeros_like(out), (np.zeros_like(h_n), np.ones_like(c_n)))
    print(f"{str(options):<24} dL/dc_0 =", " ".join(f"{v:.2e}" for v in dc_0.ravel()))"""),
    Md(
        ja="CEC だけでは困ることもあります。忘れない CEC は、長い系列で値をため込み続けます。",
        en="The carousel alone has a problem too: one that never forgets piles up its inputs "
           "on a long sequence.",
    ),
    Code("""\
x = np.random.default_rng(0).standard_normal((3000, 1, 3))
for forget_gate in (False, True):
    lstm = lstmkit.LSTM(3, 4, forget_gate=forget_gate, dtype="float64", seed=0)
    _, _, gates = lstm(x, return_gates=True)
    c = np.abs(gates["l0"]["c"])  # (T, B, H)
    print(f"forget_gate={forget_gate!s:<5}",
          "  ".join(f"max|c| up to t={t}: {c[:t].max():.1f}" for t in (10, 100, 1000, 3000)))"""),
    Exercise(
        ja="### 練習問題 3\n\n`forget_bias=5.0` の行では、100ステップ後も勾配が 0.3〜0.7 "
           "残りました。忘却ゲートの値がほぼ $\\sigma(5)$ だとすると、100ステップでの因子は"
           "いくつと見積もれるでしょうか。計算し、上の結果と比べてください。"
           "また、ゲートの値が $\\sigma(5)$ ちょうどにならない理由も考えてください。",
        en="### Exercise 3\n\nIn the `forget_bias=5.0` row, 0.3-0.7 of the gradient is left after "
           "100 steps. If the forget gate were $\\sigma(5)$ at every step, what would the factor "
           "over 100 steps be? Compute it and compare. Why is the gate not exactly "
           "$\\sigma(5)$?",
        code="""\
from lstmkit.activations import sigmoid

print("sigmoid(5)**100 =", sigmoid(5.0) ** 100)
lstm = lstmkit.LSTM(3, 4, dtype="float64", seed=0, forget_bias=5.0)
lstm.params["weight_hh_l0"][...] = 0.0
_, _, gates = lstm(np.random.default_rng(0).standard_normal((100, 1, 3)), return_gates=True)
f = gates["l0"]["f"][:, 0]  # (T, H)
print("product of f over the steps, per unit:", np.prod(f, axis=0))""",
        answer_ja="$\\sigma(5) \\approx 0.9933$ なので $0.9933^{100} \\approx 0.51$ です。"
                  "実際の $f_t$ には入力 $W_{if} x_t$ と初期化されたバイアスも加わるため、"
                  "ユニットごと、ステップごとに少しずつ違います。CEC に沿った勾配は、"
                  "各ステップの $f_t$ の積そのものです（$W_{hh} = 0$ なので他の経路はありません）。",
        answer_en="$\\sigma(5) \\approx 0.9933$, so $0.9933^{100} \\approx 0.51$. The actual "
                  "$f_t$ also gets the input term $W_{if} x_t$ and the initialised biases, so "
                  "it differs a little per unit and per step. The gradient along the carousel "
                  "is exactly the product of the $f_t$ (with $W_{hh} = 0$ there is no other "
                  "path).",
    ),
    Md(
        ja="## 1.4 確認テスト：シグモイド関数の微分\n\n"
           "$\\sigma'(z) = \\sigma(z)(1 - \\sigma(z))$ の最大値は、$\\sigma(z) = 0.5$（$z = 0$）の"
           "ときの **0.25** です。ノートは「シグモイド関数の値は最大 0.25」と書いていますが、"
           "0.25 は**微分**の最大値です。シグモイド関数の値そのものは 0 から 1 の間をとり、"
           "$z = 0$ では 0.5 です。",
        en="## 1.4 Check question: the sigmoid's derivative\n\n"
           "$\\sigma'(z) = \\sigma(z)(1 - \\sigma(z))$ is largest, **0.25**, at "
           "$\\sigma(z) = 0.5$ ($z = 0$). The note says the sigmoid's *value* is at most 0.25; "
           "0.25 is the maximum of its **derivative**. The sigmoid itself lies between 0 and "
           "1 and equals 0.5 at $z = 0$.",
    ),
    Code("""\
from lstmkit.activations import sigmoid, sigmoid_derivative

z = np.arange(-1000, 1001) / 100
d = sigmoid_derivative(z)
print("max of s(1-s):", d.max(), "at z =", z[d.argmax()], "where s =", sigmoid(z[d.argmax()]))
print("bound through 10 sigmoids:", 0.25**10)"""),
    Exercise(
        ja="### 練習問題 4\n\n$\\tanh'(z) = 1 - \\tanh^2(z)$ の最大値はいくつでしょうか。"
           "`np.tanh` で確かめ、RNN の活性化関数に tanh がよく使われる理由のひとつを考えてください。",
        en="### Exercise 4\n\nWhat is the maximum of $\\tanh'(z) = 1 - \\tanh^2(z)$? Check with "
           "`np.tanh`, and think of one reason why RNNs usually use tanh.",
        code="""\
dtanh = 1 - np.tanh(z) ** 2
print("max of 1 - tanh^2:", dtanh.max(), "at z =", z[dtanh.argmax()])""",
        answer_ja="最大値は $z = 0$ での 1 です。シグモイド関数の微分（最大 0.25）より4倍大きく、"
                  "層や時間ステップを通るたびに勾配が縮む度合いが小さくなります。",
        answer_en="The maximum is 1, at $z = 0$: four times the sigmoid's 0.25, so the gradient "
                  "shrinks less at every layer or step it passes.",
    ),
]

# -- notebook 2: ゲート、LSTM の1ステップ、覗き穴結合、修了テストのクラス、忘却ゲート ---------------

CELL = Notebook(
    name="02_lstm_cell",
    title=Md(
        ja="# 2. LSTM のセル：ゲート・演習チャレンジ・覗き穴結合・修了テスト\n\n"
           "学習ノートの後半をたどります。入力ゲート・忘却ゲート・出力ゲート、演習チャレンジの "
           "`lstm(x, prev_h, prev_c, W, U, b)`、覗き穴結合、修了テスト（練習問題）の `LSTM` "
           "クラスと lstmkit の対応、そして同梱の学習済みモデル（夏目漱石『吾輩は猫である』で学習）"
           "で確かめる、ノートの忘却ゲートの問題です。上から順に実行してください"
           "（2コアのマシンで1分ほどです）。",
        en="# 2. The LSTM cell: gates, the exercise, peepholes, the practice test\n\n"
           "The second half of the study note: the input, forget and output gates, the "
           "exercise's `lstm(x, prev_h, prev_c, W, U, b)`, peephole connections, the practice "
           "test's `LSTM` class mapped onto lstmkit, and the note's forget-gate question on the "
           "bundled trained model (Natsume Soseki's 吾輩は猫である). Run the cells from the top "
           "(about a minute on two cores).",
    ),
)
CELL.cells = [
    LINKS,
    SETUP,
    Md(
        ja="## 2.1 LSTM も RNN のひとつ\n\n"
           "ノートには「LSTM の構造は RNN とまったく異なる」とありますが、正確には LSTM は RNN の"
           "一種で、違うのは1ステップの中身（セル）です。どちらも前の時刻の状態と今の入力から次の"
           "状態を作る再帰を、時間方向にくり返します。LSTM は状態として $h$ のほかにセル状態 "
           "$c$ をもちます。lstmkit でも呼び出し方と出力の形は同じです。\n\n"
           "![LSTM のセル](../figures/ja/lstm_cell.png)",
        en="## 2.1 An LSTM is an RNN\n\n"
           "The note says the LSTM's structure is \"completely different\" from the RNN's. More "
           "precisely, an LSTM is an RNN whose step (the cell) is different: both repeat, along "
           "time, a recurrence that makes the next state from the previous state and the "
           "current input; the LSTM's state holds the cell state $c$ besides $h$. In lstmkit "
           "they are called the same way and give outputs of the same shape.\n\n"
           "![The LSTM cell](../figures/en/lstm_cell.png)",
    ),
    Code("""\
x = np.random.default_rng(0).standard_normal((6, 2, 3)).astype(np.float32)  # (T, B, D)
rnn, lstm = lstmkit.RNN(3, 4, seed=0), lstmkit.LSTM(3, 4, seed=0)
out_rnn, h_n = rnn(x)
out_lstm, (h_n, c_n), gates = lstm(x, return_gates=True)
print("RNN output", out_rnn.shape, " LSTM output", out_lstm.shape, " LSTM c_n", c_n.shape)
for name in ("i", "f", "g", "o"):
    v = gates["l0"][name]
    print(f"{name}: shape {v.shape}, min {v.min():+.2f}, max {v.max():+.2f}")"""),
    Md(
        ja="入力ゲート $i$ は新しい情報 $g$ をどれだけ CEC に書き込むか、忘却ゲート $f$ は "
           "$c_{t-1}$ をどれだけ残すか、出力ゲート $o$ は $\\tanh(c_t)$ をどれだけ $h_t$ として"
           "出すかを決めます。ゲートの値はシグモイド関数の出力なので 0 から 1 の間、セルへの入力 "
           "$g$ は tanh なので -1 から 1 の間です。",
        en="The input gate $i$ decides how much of the new information $g$ is written into the "
           "CEC, the forget gate $f$ how much of $c_{t-1}$ is kept, the output gate $o$ how much "
           "of $\\tanh(c_t)$ goes out as $h_t$. Gates are sigmoids, between 0 and 1; the cell "
           "input $g$ is a tanh, between -1 and 1.",
    ),
    Exercise(
        ja="### 練習問題 1（修了テスト 問題16）\n\n"
           "「LSTM のゲートの値はスカラーである」は正しいでしょうか。上の `gates` の形と、"
           "ある時刻・ある系列での忘却ゲートの値を見て答えてください。",
        en="### Exercise 1 (practice test, question 16)\n\n"
           "\"The values of an LSTM's gates are scalars\": true or false? Look at the shapes of "
           "`gates` above and at the forget gate at one step of one sequence.",
        code="""\
f = gates["l0"]["f"]  # (T, B, H)
print("forget gate at t=0, sequence 0:", f[0, 0])
c_prev, i, g = gates["l0"]["c"][0, 0], gates["l0"]["i"][1, 0], gates["l0"]["g"][1, 0]
c_1 = f[1, 0] * c_prev + i * g  # element-wise products: one factor per unit
print(np.allclose(c_1, gates["l0"]["c"][1, 0]))""",
        answer_ja="**誤り**です。ゲートの値はユニットごとに1つずつあるベクトル（形は (H,)、"
                  "バッチと時刻を含めると (T, B, H)）で、セル状態に**要素ごとに**掛かります"
                  "（NumPy の `*`）。ユニットごとに「どれだけ残すか」が違うので、あるユニットは"
                  "忘れ、別のユニットは覚えておく、ということができます。",
        answer_en="**False.** A gate holds one value per unit: a vector of shape (H,), "
                  "(T, B, H) over steps and sequences, multiplied **element-wise** into the "
                  "cell state (NumPy's `*`). Each unit has its own amount to keep, so one unit "
                  "can forget while another remembers.",
    ),
    Md(
        ja="## 2.2 LSTM の1ステップ（演習チャレンジ）\n\n"
           "演習の関数は、4つのブロックの線形和（活性化関数に通す前の値）をまとめて1回の行列積で"
           "計算し、$a, i, f, o$ の順に分けます（演習の $a$ は lstmkit の $g$ です）。\n\n"
           "$$z = x W^\\top + h_{t-1} U^\\top + b, \\quad c_t = i \\odot \\tanh(z_a) + f \\odot "
           "c_{t-1}, \\quad h_t = o \\odot \\tanh(c_t)$$\n\n"
           "印刷された解答には誤りが2つあります。1行目のかっこの位置がずれていて"
           "（正しくは `lstm_in = x.dot(W.T) + prev_h.dot(U.T) + b`）、セル状態の更新で "
           "`prev_c` のつもりで `c` と書いています（`forget_gate * c` では、まだ計算していない "
           "`c` を使うことになり、Python では `UnboundLocalError` になります）。",
        en="## 2.2 The LSTM step (the exercise)\n\n"
           "The exercise computes the pre-activations (the values before the activation "
           "functions) of all four blocks in one matrix product and splits them as "
           "$a, i, f, o$ (the exercise's $a$ is lstmkit's $g$):\n\n"
           "$$z = x W^\\top + h_{t-1} U^\\top + b, \\quad c_t = i \\odot \\tanh(z_a) + f \\odot "
           "c_{t-1}, \\quad h_t = o \\odot \\tanh(c_t)$$\n\n"
           "The printed answer has two slips: the first line's parenthesis is misplaced (the "
           "line is `lstm_in = x.dot(W.T) + prev_h.dot(U.T) + b`), and the cell update uses "
           "`c` where it means `prev_c` (`forget_gate * c` reads the `c` being computed: an "
           "`UnboundLocalError` in Python).",
    ),
    Code("""\
def lstm_as_printed(prev_c, input_gate, a, forget_gate):
    c = input_gate * a + forget_gate * c  # noqa: F823  (the printed answer: c for prev_c)
    return c


try:
    lstm_as_printed(np.ones(2), np.ones(2), np.ones(2), np.ones(2))
except UnboundLocalError as error:
    print(type(error).__name__, error)"""),
    Exercise(
        ja="### 練習問題 2（演習チャレンジ）\n\n"
           "`lstm(x, prev_h, prev_c, W, U, b)` を正しく書き、`(c, h)` を返してください。"
           "`W` は (4H, D)、`U` は (4H, H)、`b` は (4H,) で、ブロックの順は a, i, f, o です。"
           "次に、同じ重みを lstmkit の順（i, f, g, o）に並べ替えて `lstmkit.LSTM` に読み込み、"
           "1ステップの結果が一致することを確かめてください。",
        en="### Exercise 2 (the exercise)\n\n"
           "Write `lstm(x, prev_h, prev_c, W, U, b)` correctly, returning `(c, h)`, with `W` "
           "(4H, D), `U` (4H, H), `b` (4H,) and the blocks in the order a, i, f, o. Then load "
           "the same weights into `lstmkit.LSTM`, reordered to its i, f, g, o, and check that "
           "one step agrees.",
        code="""\
def _sigmoid(z):
    return 1.0 / (1.0 + np.exp(-z))


def lstm(x, prev_h, prev_c, W, U, b):
    lstm_in = x.dot(W.T) + prev_h.dot(U.T) + b  # (B, 4H): all four pre-activations
    a, i, f, o = np.hsplit(lstm_in, 4)
    a = np.tanh(a)
    input_gate, forget_gate, output_gate = _sigmoid(i), _sigmoid(f), _sigmoid(o)
    c = input_gate * a + forget_gate * prev_c
    h = output_gate * np.tanh(c)
    return c, h


def aifo_to_ifgo(m):
    a, i, f, o = np.split(m, 4, axis=0)
    return np.concatenate([i, f, a, o], axis=0)


D, H, B = 3, 4, 2
rng = np.random.default_rng(0)
W, U = rng.standard_normal((4 * H, D)), rng.standard_normal((4 * H, H))
b = rng.standard_normal(4 * H)
x, prev_h, prev_c = (rng.standard_normal((B, D)), rng.standard_normal((B, H)),
                     rng.standard_normal((B, H)))
c, h = lstm(x, prev_h, prev_c, W, U, b)

layer = lstmkit.LSTM(D, H, dtype="float64")
layer.load_state_dict({"weight_ih_l0": aifo_to_ifgo(W), "weight_hh_l0": aifo_to_ifgo(U),
                       "bias_ih_l0": aifo_to_ifgo(b), "bias_hh_l0": np.zeros(4 * H)})
_, (h_n, c_n) = layer(x[None], (prev_h[None], prev_c[None]))  # one step: T = 1
print(np.allclose(h_n[0], h), np.allclose(c_n[0], c))""",
    ),
    Md(
        ja="## 2.3 覗き穴結合\n\n"
           "CEC に保存された値をゲートの判断材料にするため、セル状態を重み（ユニットごとに1つ、"
           "対角行列）を介してゲートに入れます。入力ゲートと忘却ゲートは1ステップ前の $c_{t-1}$ "
           "を、出力ゲートは更新後の $c_t$ を見ます（Gers, Schraudolph & Schmidhuber 2002。"
           "ONNX の LSTM 演算子も同じ定義です）。1ステップを手で計算して確かめます。",
        en="## 2.3 Peephole connections\n\n"
           "To let the gates see what the CEC holds, the cell state enters them through weights "
           "(one per unit: a diagonal matrix). The input and forget gates see the previous "
           "$c_{t-1}$, the output gate the updated $c_t$ (Gers, Schraudolph & Schmidhuber "
           "2002; ONNX uses the same convention). One step by hand:",
    ),
    Code("""\
from lstmkit.activations import sigmoid

lstm = lstmkit.LSTM(3, 4, peepholes=True, dtype="float64", seed=0)
print(sorted(lstm.params))
x = np.random.default_rng(0).standard_normal((2, 1, 3))  # two steps: t = 0, 1
out, _, gates = lstm(x, return_gates=True)
h_prev, c_prev = out[0, 0], gates["l0"]["c"][0, 0]

p = lstm.params
z = x[1, 0] @ p["weight_ih_l0"].T + h_prev @ p["weight_hh_l0"].T
z += p["bias_ih_l0"] + p["bias_hh_l0"]
z_i, z_f, z_g, z_o = np.split(z, 4)  # lstmkit's order: i, f, g, o
i = sigmoid(z_i + p["weight_ci_l0"] * c_prev)
f = sigmoid(z_f + p["weight_cf_l0"] * c_prev)
c = f * c_prev + i * np.tanh(z_g)
o = sigmoid(z_o + p["weight_co_l0"] * c)
step1 = {name: v[1, 0] for name, v in gates["l0"].items()}
print(np.allclose(i, step1["i"]), np.allclose(f, step1["f"]), np.allclose(o, step1["o"]))"""),
    Exercise(
        ja="### 練習問題 3\n\n出力ゲートの覗き穴結合が更新前の $c_{t-1}$ を見るとしたら、"
           "lstmkit の値と一致するでしょうか。上のセルの変数で計算してみてください。",
        en="### Exercise 3\n\nIf the output gate's peephole looked at the previous $c_{t-1}$, "
           "would it agree with lstmkit? Compute it with the variables of the cell above.",
        code="""\
o_wrong = sigmoid(z_o + p["weight_co_l0"] * c_prev)
print(np.allclose(o_wrong, step1["o"]))""",
        answer_ja="一致しません（`False`）。出力ゲートは、このステップで更新したセル状態 $c_t$ を"
                  "見て、どれだけ出力するかを決めます。",
        answer_en="No (`False`): the output gate looks at the cell state updated in this step, "
                  "$c_t$, to decide how much to output.",
    ),
    Md(
        ja="## 2.4 修了テスト（練習問題）の LSTM クラス\n\n"
           "修了テストの `LSTM` クラスは、入力と隠れ状態を連結した $[x_t, h_{t-1}]$ に、形が "
           "(input_size + hidden_size, 4 * hidden_size) の重みを1つ掛け、ブロックを i, f, o, g の"
           "順に分けます。ゲートは要素ごとに掛けます（`*`。行列積ではありません）。\n\n"
           "| 出典 | 重み | ブロックの順 |\n|---|---|---|\n"
           "| 演習チャレンジ | $W$ (4H, D), $U$ (4H, H) | a, i, f, o |\n"
           "| 修了テスト | $W$ 1つ (D + H, 4H) | i, f, o, g |\n"
           "| PyTorch と lstmkit | `weight_ih_l0` (4H, D), `weight_hh_l0` (4H, H) | i, f, g, o |\n"
           "| ONNX | `W` (1, 4H, D), `R` (1, 4H, H) | i, o, f, c |",
        en="## 2.4 The practice test's LSTM class\n\n"
           "The practice test's `LSTM` class multiplies the concatenation $[x_t, h_{t-1}]$ by "
           "one weight of shape (input_size + hidden_size, 4 * hidden_size) and splits the "
           "blocks as i, f, o, g. Gates multiply element-wise (`*`, not a matrix product).\n\n"
           "| source | weights | block order |\n|---|---|---|\n"
           "| the exercise | $W$ (4H, D), $U$ (4H, H) | a, i, f, o |\n"
           "| the practice test | one $W$ (D + H, 4H) | i, f, o, g |\n"
           "| PyTorch and lstmkit | `weight_ih_l0` (4H, D), `weight_hh_l0` (4H, H) | i, f, g, o |\n"
           "| ONNX | `W` (1, 4H, D), `R` (1, 4H, H) | i, o, f, c |",
    ),
    Code("""\
class ExamLSTM:
    \"\"\"The practice test's layout: one weight (D + H, 4H) on [x, h_prev], blocks i, f, o, g.\"\"\"

    def __init__(self, input_size, hidden_size, rng):
        self.W = 0.3 * rng.standard_normal((input_size + hidden_size, 4 * hidden_size))
        self.b = 0.3 * rng.standard_normal(4 * hidden_size)

    def step(self, x, h_prev, c_prev):
        z = np.concatenate([x, h_prev], axis=1) @ self.W + self.b  # (B, 4H)
        i, f, o, g = np.split(z, 4, axis=1)
        i, f, o, g = sigmoid(i), sigmoid(f), sigmoid(o), np.tanh(g)
        c_next = c_prev * f + g * i
        h_next = np.tanh(c_next) * o  # question 17: this line
        return h_next, c_next


D, H, T, B = 3, 5, 7, 2
rng = np.random.default_rng(0)
exam = ExamLSTM(D, H, rng)
x = rng.standard_normal((T, B, D))
h, c = np.zeros((B, H)), np.zeros((B, H))
for t in range(T):
    h, c = exam.step(x[t], h, c)
print("h_T:", h[0])"""),
    Exercise(
        ja="### 練習問題 4（修了テスト 問題15・17）\n\n"
           "(1) 2.1節の図で、4つの箱はそれぞれ何でしょうか（問題15）。\n\n"
           "(2) `h_next = ____` の空欄に入る式は何でしょうか（問題17）。\n\n"
           "(3) `ExamLSTM` の重みを lstmkit の state dict（`weight_ih_l0`, `weight_hh_l0`, "
           "`bias_ih_l0`, `bias_hh_l0`、ブロックの順は i, f, g, o）に変換する関数 "
           "`exam_to_state_dict(W, b, input_size)` を書き、7ステップ後の $h_T$, $c_T$ が一致する"
           "ことを確かめてください。",
        en="### Exercise 4 (practice test, questions 15 and 17)\n\n"
           "(1) In the diagram of section 2.1, what are the four boxes (question 15)?\n\n"
           "(2) What goes in the blank of `h_next = ____` (question 17)?\n\n"
           "(3) Write `exam_to_state_dict(W, b, input_size)`, converting `ExamLSTM`'s weights to "
           "lstmkit's state dict (`weight_ih_l0`, `weight_hh_l0`, `bias_ih_l0`, `bias_hh_l0`, "
           "blocks i, f, g, o), and check that $h_T$ and $c_T$ after 7 steps agree.",
        code="""\
def exam_to_state_dict(W, b, input_size):
    def ifog_to_ifgo(a):  # gate blocks along axis 0
        i, f, o, g = np.split(a, 4, axis=0)
        return np.concatenate([i, f, g, o], axis=0)

    W_rows = ifog_to_ifgo(W.T)  # (4H, D + H): one row per gate unit
    return {
        "weight_ih_l0": W_rows[:, :input_size],  # (4H, D)
        "weight_hh_l0": W_rows[:, input_size:],  # (4H, H)
        "bias_ih_l0": ifog_to_ifgo(b),
        "bias_hh_l0": np.zeros_like(b),  # the test's class has one bias, PyTorch two
    }


layer = lstmkit.LSTM(D, H, dtype="float64")
layer.load_state_dict(exam_to_state_dict(exam.W, exam.b, D))
_, (h_n, c_n) = layer(x)
print("same h_T:", np.allclose(h_n[0], h), " same c_T:", np.allclose(c_n[0], c))""",
        answer_ja="(1) 左から忘却ゲート $f$、入力ゲート $i$、セルへの入力 $g$（tanh）、"
                  "出力ゲート $o$ です。$f$ は $c_{t-1}$ に、$i$ は $g$ に掛かり、その和が $c_t$ に"
                  "なります。$o$ は $\\tanh(c_t)$ に掛かって $h_t$ になります。破線は覗き穴結合です。\n\n"
                  "(2) `h_next = np.tanh(c_next) * o`（要素ごとの積）。\n\n"
                  "(3) 上のセルのとおりです。ブロックに分け、名前を付け、変換先の順につなげ直すだけです。",
        answer_en="(1) From the left: the forget gate $f$, the input gate $i$, the cell input "
                  "$g$ (tanh), the output gate $o$. $f$ multiplies $c_{t-1}$, $i$ multiplies "
                  "$g$, and their sum is $c_t$; $o$ multiplies $\\tanh(c_t)$ to give $h_t$. The "
                  "dashed lines are the peepholes.\n\n"
                  "(2) `h_next = np.tanh(c_next) * o` (element-wise).\n\n"
                  "(3) As in the cell above: split into blocks, name them, and concatenate them "
                  "in the target's order.",
    ),
    Md(
        ja="## 2.5 確認テスト：忘却ゲートの問題を学習済みモデルで\n\n"
           "> 「映画おもしろかったね。ところで、とてもお腹が空いたから何か____。」\n"
           "> 空欄の予測に「とても」は影響しないと考えられます。このとき作用するゲートはどれか。\n\n"
           "答えは**忘却ゲート**です。lstmkit には、『吾輩は猫である』で学習した小さな文字単位の"
           "言語モデルが同梱されています（`lstmkit.pretrained`）。このモデルに文を読ませて、"
           "空欄に何を書くか、「とても」で忘却ゲートがどう動くかを見ます。明治の小説で学習した"
           "モデルなので、現代の会話文の続きは得意ではありません。",
        en="## 2.5 Check question: the forget gate, on a trained model\n\n"
           "> 「映画おもしろかったね。ところで、とてもお腹が空いたから何か____。」\n"
           "> (\"The movie was fun. By the way, I'm very hungry, so ____ something.\") The word "
           "「とても」 (very) does not affect the blank. Which gate acts here?\n\n"
           "The answer is the **forget gate**. lstmkit ships a small character language model "
           "trained on 吾輩は猫である (`lstmkit.pretrained`). Let it read the sentence: what "
           "does it write in the blank, and what does its forget gate do on 「とても」? It "
           "learned from a Meiji-era novel, so modern conversation is not its strength.",
    ),
    Code("""\
from lstmkit.pretrained import load_pretrained
from lstmkit.sampling import sample

model, vocab, meta = load_pretrained()
sentence = "映画おもしろかったね。ところで、とてもお腹が空いたから何か"
print("greedy:", sentence + "|" + sample(model, vocab, 12, prime=sentence, temperature=0))
for seed in range(3):
    text = sample(model, vocab, 12, prime=sentence, temperature=0.8, seed=seed)
    print(f"seed {seed}:", sentence + "|" + text)"""),
    Md(
        ja="忘却ゲートの値を1文字ずつ見ます。$f_t$ は「ステップ $t$ で $c_{t-1}$ をどれだけ残すか」"
           "なので、ある文字のところで $f$ が小さいユニットは、その直前までの内容を捨てています。",
        en="The forget gate character by character. $f_t$ is how much of $c_{t-1}$ step $t$ "
           "keeps, so a unit whose $f$ is small at a character drops what it held just before.",
    ),
    Code({
        "ja": """\
from lstmkit.grad_mode import no_grad

ids = vocab.encode(sentence)
with no_grad():
    _, _, per_layer = model.forward(ids[:, None], return_gates=True)
f = per_layer["l0"]["f"][:, 0]  # (T, H): one row per character
units = np.argsort(-f.std(axis=0))[:16]  # the 16 units whose f varies most
fig, ax = plt.subplots(figsize=(10, 3.5))
image = ax.imshow(f[:, units].T, aspect="auto", vmin=0, vmax=1, cmap="viridis")
ax.set_xticks(range(len(sentence)), list(sentence))
ax.set_ylabel("ユニット")
ax.set_title("忘却ゲート f（変化の大きい16ユニット）")
fig.colorbar(image)
plt.show()
for ch, value in zip(sentence, f.mean(axis=1)):
    print(ch, f"{value:.3f}", "#" * int(round(20 * value)))""",
        "en": """\
from lstmkit.grad_mode import no_grad

ids = vocab.encode(sentence)
with no_grad():
    _, _, per_layer = model.forward(ids[:, None], return_gates=True)
f = per_layer["l0"]["f"][:, 0]  # (T, H): one row per character
units = np.argsort(-f.std(axis=0))[:16]  # the 16 units whose f varies most
fig, ax = plt.subplots(figsize=(10, 3.5))
image = ax.imshow(f[:, units].T, aspect="auto", vmin=0, vmax=1, cmap="viridis")
ax.set_xticks(range(len(sentence)), [f"{n}" for n in range(len(sentence))])
ax.set_xlabel("character index (see the list below)")
ax.set_ylabel("unit")
ax.set_title("forget gate f (the 16 units that vary most)")
fig.colorbar(image)
plt.show()
for ch, value in zip(sentence, f.mean(axis=1)):
    print(ch, f"{value:.3f}", "#" * int(round(20 * value)))""",
    }),
    Exercise(
        ja="### 練習問題 5\n\n「とても」を取り除いた文と元の文で、モデルが次の1文字に与える確率"
           "（上位5文字）はどれだけ変わるでしょうか。`model.forward` の最後のステップの出力"
           "（ロジット）を `lstmkit.sampling.next_char_probabilities` で確率にして比べてください。"
           "また、「とても」の3文字で $f$ が特に小さくなるユニットを探してください。",
        en="### Exercise 5\n\nHow much does removing 「とても」 change the model's probabilities "
           "for the next character (the top 5)? Turn the last step's logits of `model.forward` "
           "into probabilities with `lstmkit.sampling.next_char_probabilities` and compare. Then "
           "look for units whose $f$ is especially small on the three characters of 「とても」.",
        code="""\
from lstmkit.sampling import next_char_probabilities


def top5(text):
    with no_grad():
        logits, _ = model.forward(vocab.encode(text)[:, None])
    probs = next_char_probabilities(logits[-1, 0])
    best = np.argsort(-probs)[:5]
    return [(vocab.decode([k]), round(float(probs[k]), 3)) for k in best]


print("with とても:   ", top5(sentence))
print("without とても:", top5(sentence.replace("とても", "")))
start = sentence.index("とても")
rest = np.delete(f, range(start, start + 3), axis=0)
drop = f[start : start + 3].mean(axis=0) - rest.mean(axis=0)  # (H,)
print("units whose f falls most on とても:", np.argsort(drop)[:5], np.sort(drop)[:5].round(3))""",
        answer_ja="同梱モデルでは、上位4つの候補は「とても」があってもなくても同じで、確率もほとんど"
                  "変わりません（「し」が 0.080 と 0.073）。このモデルにとっても、「とても」は空欄の予測に"
                  "ほぼ影響しません。「とても」の3文字で $f$ が特に小さくなるユニットも、いくつかは見つかります"
                  "（ユニット120はほかの文字での平均より 0.5 ほど低くなります）。ただし、多くのユニットは"
                  "そこで $f > 0.8$ のままセル状態を保っています。また、ある文字で忘却ゲートが閉じたときに"
                  "捨てられるのは、その文字より**前**にセルが保持していた内容で、その文字自身ではありません。"
                  "「とても」を忘れるなら、閉じるのはその後の文字（「お」「腹」…）のはずです。`f` の行を"
                  "見て確かめてください。それでも試験の答えは「忘却ゲート」です。不要になった情報を捨てるしくみを"
                  "もつのは忘却ゲートで、あるネットワークがある単語でそれを使うかどうかは、このように"
                  "ゲートの値と予測の両方を見て確かめます。",
        answer_en="With the bundled model the four leading candidates are the same with and "
                  "without 「とても」, their probabilities barely move (「し」 0.080 against "
                  "0.073): for this model too, the word hardly affects the blank. A few units' $f$ "
                  "does fall on those three characters (unit 120's by about 0.5 below its mean "
                  "elsewhere), but most units keep $f > 0.8$ there. And a gate closing at a "
                  "character drops what the cell held *before* that character, not the character "
                  "itself: to forget 「とても」 a unit would close at the characters after it "
                  "(「お」, 「腹」, ...); check the rows of `f`. The exam's answer is still \"the forget gate\": it is "
                  "the gate that can drop what no longer matters; whether a network uses it for a "
                  "given word is what the gates and the predictions, read together, show.",
    ),
]

NOTEBOOKS = [GRADIENTS, CELL]


# -- writing -----------------------------------------------------------------------------------


def _cells(book: Notebook, lang: str) -> list:
    cells = [nbformat.v4.new_markdown_cell(getattr(book.title, lang))]
    for item in book.cells:
        if isinstance(item, Md):
            text = getattr(item, lang).replace("{name}", book.name)
            cells.append(nbformat.v4.new_markdown_cell(text))
        elif isinstance(item, Code):
            source = item.source if isinstance(item.source, str) else item.source[lang]
            cells.append(nbformat.v4.new_code_cell(source))
        else:
            cells.append(nbformat.v4.new_markdown_cell(getattr(item, lang)))
            mine = "# ここに自分の答えを書いてみましょう" if lang == "ja" else "# Your answer here"
            cells.append(nbformat.v4.new_code_cell(mine))
            heading = "**解答**" if lang == "ja" else "**Answer**"
            if item.code:
                answer = nbformat.v4.new_code_cell(item.code)
                answer.metadata = {"jupyter": {"source_hidden": True}, "tags": ["answer"]}
                cells.append(nbformat.v4.new_markdown_cell(heading))
                cells.append(answer)
            text = getattr(item, f"answer_{lang}")
            if text:
                summary = "解答を見る" if lang == "ja" else "Show the answer"
                body = text if item.code else f"{heading}\n\n{text}"
                cells.append(nbformat.v4.new_markdown_cell(
                    f"<details><summary>{summary}</summary>\n\n{body}\n\n</details>"))
    for n, cell in enumerate(cells):
        cell.id = f"{book.name}-{n:03d}"
    return cells


def build(book: Notebook, lang: str) -> nbformat.NotebookNode:
    """One notebook, without outputs."""
    nb = nbformat.v4.new_notebook()
    nb.cells = _cells(book, lang)
    nb.metadata = {
        "kernelspec": {"display_name": "Python 3", "language": "python", "name": "python3"},
        "language_info": {"name": "python"},
    }
    return nb


def expected() -> dict[Path, str]:
    """Every notebook's path and the exact text this script writes there."""
    return {
        HERE / f"{book.name}.{lang}.ipynb": nbformat.writes(build(book, lang)) + "\n"
        for book in NOTEBOOKS for lang in LANGUAGES
    }


def main(argv: list[str]) -> int:
    stale = []
    for path, text in expected().items():
        current = path.read_text(encoding="utf-8") if path.exists() else None
        if current != text:
            stale.append(path)
            if "--check" not in argv:
                path.write_text(text, encoding="utf-8")
                print(f"wrote {path.relative_to(HERE.parent.parent)}")
    if "--check" in argv and stale:
        print("stale:", ", ".join(str(p) for p in stale))
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
