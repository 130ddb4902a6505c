# Two overlapping histograms with their fitted normal densities.
import numpy as np
import matplotlib.pyplot as plt

rng = np.random.default_rng(1)
a = rng.normal(170, 7, 2000)
b = rng.normal(158, 6, 2000)
bins = np.linspace(130, 200, 60)
fig, ax = plt.subplots(figsize=(8, 5))
for data, color, label in [(a, "tab:blue", "group A"), (b, "tab:orange", "group B")]:
    ax.hist(data, bins=bins, density=True, alpha=0.5, color=color, label=label)
    mu, sd = data.mean(), data.std()
    ax.plot(bins, np.exp(-((bins - mu) ** 2) / (2 * sd**2)) / (sd * np.sqrt(2 * np.pi)), color=color)
ax.set_xlabel("height (cm)")
ax.set_ylabel("density")
ax.set_title("Height distribution")
ax.legend()
plt.savefig("novice.png")
