# The same four samples as box plots and as violin plots, side by side.
import numpy as np
import matplotlib.pyplot as plt

rng = np.random.default_rng(6)
data = [rng.normal(0, 1, 300), rng.normal(1, 0.5, 300), rng.exponential(1.2, 300), rng.uniform(-2, 2, 300)]
names = ["normal", "narrow", "exponential", "uniform"]
fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 5), sharey=True)
ax1.boxplot(data, notch=True, patch_artist=True, boxprops={"facecolor": "lightblue"})
ax1.set_xticks(range(1, 5), names)
ax1.set_title("Box plot")
parts = ax2.violinplot(data, showmeans=True, showmedians=True)
for body in parts["bodies"]:
    body.set_alpha(0.6)
ax2.set_xticks(range(1, 5), names)
ax2.set_title("Violin plot")
fig.tight_layout()
plt.savefig("novice.png")
