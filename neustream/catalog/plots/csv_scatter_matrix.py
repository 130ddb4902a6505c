# data: measurements.csv
# A 4x4 scatter matrix of four measured features read from a CSV, coloured by group, histograms on the diagonal.
import numpy as np
import matplotlib.pyplot as plt

raw = np.genfromtxt("measurements.csv", delimiter=",", names=True, dtype=None, encoding="utf-8")
features = ["length_a", "width_a", "length_b", "width_b"]
groups = sorted(set(raw["group"]))
colors = dict(zip(groups, ["tab:red", "tab:green", "tab:blue"]))
fig, axs = plt.subplots(4, 4, figsize=(11, 11))
for i, fy in enumerate(features):
    for j, fx in enumerate(features):
        ax = axs[i, j]
        for g in groups:
            sel = raw["group"] == g
            if i == j:
                ax.hist(raw[fx][sel], bins=15, alpha=0.5, color=colors[g])
            else:
                ax.scatter(raw[fx][sel], raw[fy][sel], s=8, alpha=0.7, color=colors[g], label=g)
        if i == 3:
            ax.set_xlabel(fx)
        if j == 0:
            ax.set_ylabel(fy)
axs[0, 1].legend(fontsize=8)
fig.suptitle("Scatter matrix of the measurements")
fig.tight_layout()
plt.savefig("novice.png")
