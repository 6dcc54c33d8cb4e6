"""pytest integration: the ``pytest11`` plugin (``plugin``) and the syrupy extension over goldens.

``rootdir`` is the running pytest session's rootdir (set by the plugin, even
when it is otherwise inert), from which the project's golden folder is found.
"""

rootdir = None
