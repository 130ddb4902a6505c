# Radar chart comparing three products on six attributes.
import numpy as np
import matplotlib.pyplot as plt

attrs = ["speed", "price", "comfort", "safety", "range", "style"]
products = {"Model X": [8, 4, 7, 9, 6, 7], "Model Y": [6, 8, 6, 7, 8, 5], "Model Z": [9, 3, 5, 6, 5, 9]}
angles = np.linspace(0, 2 * np.pi, len(attrs), endpoint=False).tolist()
angles += angles[:1]
fig, ax = plt.subplots(figsize=(7, 7), subplot_kw={"projection": "polar"})
for name, vals in products.items():
    vals = vals + vals[:1]
    ax.plot(angles, vals, linewidth=2, label=name)
    ax.fill(angles, vals, alpha=0.15)
ax.set_xticks(angles[:-1], attrs)
ax.set_ylim(0, 10)
ax.set_title("Product comparison", pad=20)
ax.legend(loc="upper right", bbox_to_anchor=(1.25, 1.1))
plt.savefig("novice.png")
