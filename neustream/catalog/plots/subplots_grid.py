# A 2x3 grid mixing line, scatter, bar, histogram, step and fill plots.
import numpy as np
import matplotlib.pyplot as plt

rng = np.random.default_rng(3)
x = np.linspace(0, 2 * np.pi, 200)
fig, axs = plt.subplots(2, 3, figsize=(12, 7))
axs[0, 0].plot(x, np.sin(x), x, np.cos(x))
axs[0, 0].set_title("sin and cos")
axs[0, 1].scatter(rng.random(100), rng.random(100), c=rng.random(100), cmap="plasma")
axs[0, 1].set_title("scatter")
axs[0, 2].bar(list("ABCDE"), rng.integers(3, 20, 5), color="teal")
axs[0, 2].set_title("bar")
axs[1, 0].hist(rng.exponential(2, 1000), bins=40, color="slateblue")
axs[1, 0].set_title("histogram")
axs[1, 1].step(range(20), np.cumsum(rng.integers(-2, 3, 20)), where="mid")
axs[1, 1].set_title("random walk")
axs[1, 2].fill_between(x, np.sin(x), np.sin(x) + 0.5, alpha=0.4)
axs[1, 2].set_title("band")
for ax in axs.flat:
    ax.grid(alpha=0.3)
fig.suptitle("Six panels")
fig.tight_layout()
plt.savefig("novice.png")
