"""nn: a small neural-network library written on exprc's public API only.

It is an example of a library built on exprc, as Lasagne and Keras were built on
Theano: parameters are :func:`exprc.shared` variables, layers are functions of
symbolic expressions, gradients come from :func:`exprc.grad`, and optimizers
return ``updates`` lists for :func:`exprc.function`, so one training step is one
compiled call that also updates every parameter.

    net = nn.MLP([64, 128, 10], activation=nn.relu, seed=0)
    step, predict = nn.compile_classifier(net, nn.Adam(lr=1e-3))
    for xb, yb in nn.minibatches(x, y_onehot, 64, rng):
        loss = step(xb, yb)
"""

from nn.layers import MLP, Dense, relu, sigmoid, softmax, tanh
from nn.losses import accuracy, one_hot, softmax_cross_entropy
from nn.optim import SGD, Adam
from nn.train import compile_classifier, minibatches

__all__ = ["MLP", "SGD", "Adam", "Dense", "accuracy", "compile_classifier", "minibatches", "one_hot", "relu",
           "sigmoid", "softmax", "softmax_cross_entropy", "tanh"]
