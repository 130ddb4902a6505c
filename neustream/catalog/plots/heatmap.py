# Correlation-style heatmap of a 12x12 matrix with every cell annotated.
import numpy as np
import matplotlib.pyplot as plt

rng = np.random.default_rng(2)
names = [f"var{i}" for i in range(12)]
m = rng.normal(size=(200, 12))
m[:, 1] += m[:, 0]
m[:, 5] -= 0.7 * m[:, 4]
corr = np.corrcoef(m, rowvar=False)
fig, ax = plt.subplots(figsize=(9, 8))
im = ax.imshow(corr, cmap="coolwarm", vmin=-1, vmax=1)
ax.set_xticks(range(12), names, rotation=45, ha="right")
ax.set_yticks(range(12), names)
for i in range(12):
    for j in range(12):
        ax.text(j, i, f"{corr[i, j]:.2f}", ha="center", va="center", fontsize=7,
                color="white" if abs(corr[i, j]) > 0.5 else "black")
fig.colorbar(im, ax=ax, shrink=0.8)
ax.set_title("Correlation matrix")
plt.tight_layout()
plt.savefig("novice.png")
