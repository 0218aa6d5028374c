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

``nn.MLP(..., dropout=0.5)`` adds inverted dropout after every hidden layer: active in ``step``
(a new mask drawn inside the compiled call each time), the identity in ``predict``.
"""

from nn.layers import MLP, Dense, Dropout, dropout, relu, sigmoid, softmax, tanh
from nn.losses import accuracy, one_hot, softmax_cross_entropy
from nn.optim import SGD, Adam
from nn.train import compile_classifier, minibatches

__all__ = ["MLP", "SGD", "Adam", "Dense", "Dropout", "accuracy", "compile_classifier", "dropout", "minibatches",
           "one_hot", "relu", "sigmoid", "softmax", "softmax_cross_entropy", "tanh"]
