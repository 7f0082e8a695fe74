"""The probe inside a hand-written training loop: ResNet-20 on CIFAR-10, plain optax, and a
recorder that writes what ``landscape probe`` writes. Afterwards ``landscape report runs/loop``.

    python examples/own_loop.py [STEPS]
"""

import sys

import jax
import jax.numpy as jnp
import optax
from resnet20 import resnet20  # the file beside this one

from landscape.data import load_dataset, normalize
from landscape.network import from_linen
from landscape.recorder import LoopRecorder
from landscape.train import make_loss_fn

steps = int(sys.argv[1]) if len(sys.argv) > 1 else 100
data = load_dataset("cifar10")
network = from_linen(resnet20(norm="batchnorm"))
loss_fn = make_loss_fn(network)  # (params, state, batch) -> (loss, (new_state, logits))
params, state = network.init(jax.random.key(0), jnp.zeros((1, 32, 32, 3)))
optimizer = optax.sgd(0.1)
opt_state = optimizer.init(params)


@jax.jit
def train_step(params, state, opt_state, batch):
    (loss, (state, _)), grads = jax.value_and_grad(loss_fn, has_aux=True)(params, state, batch)
    updates, opt_state = optimizer.update(grads, opt_state)
    return optax.apply_updates(params, updates), state, opt_state, loss, grads


recorder = LoopRecorder("runs/loop", loss_fn, etas=jnp.linspace(0.05, 0.4, 8), overwrite=True)
key = jax.random.key(1)
for step in range(steps):
    idx = jax.random.choice(jax.random.fold_in(key, step), len(data.train_labels), (128,))
    images = normalize(data.train_images[idx], data.mean, data.std)
    batch = {"image": images, "label": data.train_labels[idx]}
    new = train_step(params, state, opt_state, batch)
    recorder(step, params, state, batch, grad=new[4], loss=new[3])  # probe x_t before the update
    recorder.log(step, loss=new[3])
    params, state, opt_state = new[:3]
recorder.close()
print("records in runs/loop; try: landscape report runs/loop")
