"""``exprc.search`` is :mod:`exprc.accuracy.search` (the accuracy search lives in the accuracy
package, next to the measurements and the exact table it uses).

Importing this module puts that module in its place in ``sys.modules``, so ``import exprc.search``,
``from exprc import search`` and ``exprc.search.Settings`` all reach the one module object.
"""

import sys

from exprc.accuracy import search as _search

sys.modules[__name__] = _search
