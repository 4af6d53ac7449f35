"""The course's web site: built from stored notebooks, then read in headless Chromium."""

import base64
import functools
import io
import threading
from html.parser import HTMLParser
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import unquote, urlsplit

import nbformat
import pytest

from detutils.course import NOTEBOOK_DIR, build_site, course_title, notebook_title

CHROMIUM, CHROMEDRIVER = "/usr/bin/chromium", "/usr/bin/chromedriver"
REAL_PAGE = "01_boxes_and_iou"  # a real notebook with figures


class _Links(HTMLParser):
    """The ``<img src>`` and ``<a href>`` of a page's article (its content, no sidebar)."""

    def __init__(self):
        super().__init__()
        self.images, self.links, self._depth = [], [], 0

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if tag == "article" or self._depth:
            self._depth += tag == "article"
            if tag == "img":
                self.images.append(attrs["src"])
            elif tag == "a" and attrs.get("href"):
                self.links.append(attrs["href"])

    def handle_endtag(self, tag):
        if tag == "article" and self._depth:
            self._depth -= 1


def _article(page: Path) -> _Links:
    parser = _Links()
    parser.feed(page.read_text(encoding="utf-8"))
    return parser


def _figure_png() -> str:
    from matplotlib.figure import Figure

    figure = Figure(figsize=(2, 1.5), dpi=50)
    figure.subplots().plot([0, 1, 2], [0, 1, 0])
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png")
    return base64.b64encode(buffer.getvalue()).decode()


def _tiny_course(folder: Path) -> Path:
    """Two small executed notebooks, the first with a figure, and their student versions."""
    folder.mkdir()
    (folder / "exercises").mkdir()
    plot = nbformat.v4.new_code_cell("plot()", execution_count=1)
    plot.outputs = [nbformat.v4.new_output("display_data", data={"image/png": _figure_png()})]
    text = nbformat.v4.new_code_cell("print(4)", execution_count=1)
    text.outputs = [nbformat.v4.new_output("stream", text="4\n")]
    for name, heading, cell in [
        ("01_first_plot", "01 · A first plot", plot),
        ("02_some_text", "02 · Some text", text),
    ]:
        nb = nbformat.v4.new_notebook()
        intro = f"# {heading}\n\nThis notebook shows {name[3:]}. Then more."
        nb.cells = [nbformat.v4.new_markdown_cell(intro), cell]
        nbformat.write(nb, folder / f"{name}.ipynb")
        nb.cells[1].outputs = []
        nbformat.write(nb, folder / "exercises" / f"{name}.ipynb")
    return folder


def test_site_of_a_tiny_course_has_index_figures_and_student_versions(tmp_path):
    out, notebooks = tmp_path / "site", _tiny_course(tmp_path / "notebooks")
    index = build_site(notebooks, out)
    assert index == out / "index.html" and index.is_file()
    home = index.read_text(encoding="utf-8")
    assert "01 · A first plot" in home and "02 · Some text" in home
    assert "This notebook shows first_plot." in home  # the description, from the notebook
    assert {"01_first_plot.html", "02_some_text.html"} <= set(_article(index).links)
    for name in ("01_first_plot", "02_some_text"):
        page = _article(out / f"{name}.html")
        if name == "01_first_plot":
            assert page.images, "the figure is not on its page"
        for src in page.images:
            assert src.startswith("data:image/") or (out / unquote(src)).is_file(), src
        student = [href for href in page.links if href.endswith(f"/{name}.ipynb")]
        assert len(student) == 1, f"{name}: no link to its student version"
        exercise = (notebooks / "exercises" / f"{name}.ipynb").read_bytes()
        assert (out / unquote(student[0])).read_bytes() == exercise
    assert "02_some_text.html" in (out / "01_first_plot.html").read_text(encoding="utf-8")

    build_site(notebooks, out)  # an earlier site is replaced
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "notes.txt").write_text("mine")
    with pytest.raises(FileExistsError):
        build_site(notebooks, tmp_path / "other")


def _chrome():
    """Headless Debian Chromium driven by selenium and Debian's chromedriver."""
    missing = [path for path in (CHROMIUM, CHROMEDRIVER) if not Path(path).exists()]
    if missing:
        pytest.skip(
            f"no {' or '.join(missing)}: `apt-get install chromium chromium-driver` "
            "provides them (the browser test is skipped)"
        )
    webdriver = pytest.importorskip("selenium.webdriver", reason="pip install -e '.[dev]'")
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for argument in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage",
                     "--disable-gpu", "--window-size=1280,900"):  # fmt: skip
        options.add_argument(argument)
    return webdriver.Chrome(options=options, service=webdriver.ChromeService(CHROMEDRIVER))


@pytest.fixture(scope="module")
def served_site(tmp_path_factory):
    """The site of the stored course, served on 127.0.0.1: its base URL."""
    site = tmp_path_factory.mktemp("course") / "site"
    build_site(NOTEBOOK_DIR, site, NOTEBOOK_DIR / "exercises")

    class Handler(SimpleHTTPRequestHandler):
        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(Handler, directory=site))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


ALL_IMAGES_LOADED = """
const images = Array.from(document.querySelectorAll("article img"));
return images.map(image => [image.currentSrc.slice(0, 80), image.complete,
                            image.naturalWidth]);
"""
FETCH_STATUS = """
const done = arguments[arguments.length - 1];
fetch(arguments[0]).then(response => done(response.status), error => done(String(error)));
"""


def test_course_site_in_headless_chromium(served_site):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    stored = nbformat.read(NOTEBOOK_DIR / f"{REAL_PAGE}.ipynb", as_version=4)
    title = notebook_title(stored)
    browser = _chrome()
    try:
        browser.set_page_load_timeout(30)
        browser.get(f"{served_site}/index.html")
        assert course_title() in browser.find_element(By.CSS_SELECTOR, "article h1").text
        assert course_title() in browser.title
        link = browser.find_element(By.CSS_SELECTOR, f'article a[href="{REAL_PAGE}.html"]')
        assert link.text == title
        link.click()
        page = f"/{REAL_PAGE}.html"
        WebDriverWait(browser, 20).until(lambda b: urlsplit(b.current_url).path == page)
        assert browser.find_element(By.CSS_SELECTOR, "article h1").text.startswith(title)
        assert title in browser.title

        WebDriverWait(browser, 20).until(
            lambda b: all(complete for _, complete, _ in b.execute_script(ALL_IMAGES_LOADED))
        )
        images = browser.execute_script(ALL_IMAGES_LOADED)
        assert images, "no figure on the page"
        broken = [src for src, _, width in images if width == 0]
        assert not broken, f"images that did not load: {broken}"

        student = browser.find_element(
            By.CSS_SELECTOR, f'article a.download[href$="/{REAL_PAGE}.ipynb"]'
        )
        assert browser.execute_async_script(FETCH_STATUS, student.get_attribute("href")) == 200
        for arrow in ("a.left-prev", "a.right-next"):  # the previous and next pages
            assert browser.find_element(By.CSS_SELECTOR, arrow).get_attribute("href")
    finally:
        browser.quit()


def test_no_chromium_gives_a_clear_skip(monkeypatch):
    monkeypatch.setattr(f"{__name__}.CHROMIUM", "/nonexistent/chromium")
    with pytest.raises(pytest.skip.Exception, match="apt-get install chromium chromium-driver"):
        _chrome()
