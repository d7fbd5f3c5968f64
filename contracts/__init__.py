"""The event contracts as documents for other systems: the AsyncAPI document and its HTML.

``DOCUMENT`` is the generated, committed ``asyncapi.yaml``; ``HTML_DIR`` is where
``erynoa asyncapi --html`` renders its HTML (a build output, not committed). The API serves
both (``api.routes.events``).
"""

from erynoa.settings import PROJECT_ROOT

DOCUMENT = PROJECT_ROOT / "asyncapi.yaml"
HTML_DIR = PROJECT_ROOT / "build" / "asyncapi-html"
# Where the API serves the HTML; the renderer puts it in the page's <base href>.
DOCS_PATH = "/api/v1/events/docs/"
