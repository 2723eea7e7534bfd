import jax, jax.numpy as jnp, numpy as np
import functional_sgd as fsgd
import reference
rng = np.random.default_rng(0)
n=1003
x = rng.normal(size=(n,2)).astype(np.float32); y = (x @ np.array([3.,2.],np.float32) + 0.1*rng.normal(size=n)).astype(np.float32)
idx = np.asarray(fsgd.sample_indices(jax.random.key(1), n, 202, 10, replace=False, drop_last=False))
def gen():
    for row in idx:
        row = row[row >= 0]
        yield x[row], y[row]
r = fsgd.fit(fsgd.linear_mse, jnp.zeros(2), fsgd.stream(gen(), block=64), lr=0.1)
r2 = fsgd.fit(fsgd.linear_mse, jnp.zeros(2), (x, y), lr=0.1, indices=idx, drop_last=False)
print(r.params, r2.params, np.abs(r.losses - r2.losses).max())
p, l = reference.fit(fsgd.linear_mse, np.zeros(2, np.float32), (x, y), lr=0.1, indices=idx, drop_last=False)
print(p, np.abs(l - np.asarray(r2.losses)).max())
mm = np.memmap("/tmp/mm_x.dat", dtype=np.float32, mode="w+", shape=x.shape); mm[:] = x
r3 = fsgd.fit(fsgd.linear_mse, jnp.zeros(2), (mm, y), lr=0.1, indices=idx, drop_last=False)
print(r3.params)
r4 = fsgd.fit(fsgd.linear_mse, jnp.zeros(2), (mm, y), lr=0.1, steps=202, batch_size=10, key=jax.random.key(1), replace=False, drop_last=False)
print(r4.params)
