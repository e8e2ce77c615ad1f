"""The web chat page in a real browser: Debian's chromium driven by Playwright (no browser download).

`make test` installs chromium first (`make browser`). Screenshots are saved as test
artefacts under ``$DMHA_TEST_ARTIFACTS`` (default ``test-artifacts/`` in the checkout).
"""

from __future__ import annotations

import asyncio
import os
import re
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from playwright.async_api import expect

from tests.integration.conftest import RELAXED_LEARNING, integration_config
from tests.integration.gateway.conftest import LiveGateway, start_stack

pytestmark = [pytest.mark.integration, pytest.mark.browser]

CHROMIUM = Path(os.environ.get("DMHA_CHROMIUM", "/usr/bin/chromium"))
ARTIFACTS = Path(os.environ.get("DMHA_TEST_ARTIFACTS", Path(__file__).resolve().parents[3] / "test-artifacts"))


# Records each distinct text of the reply being streamed (to see it grow token by token).
WATCH_STREAM = """() => {
  window.__seen = [];
  new MutationObserver(() => {
    const li = document.querySelector('#messages li.assistant:last-child');
    if (!li || li.getAttribute('aria-busy') !== 'true') return;
    const text = li.querySelector('.text').textContent;
    if (text && window.__seen[window.__seen.length - 1] !== text) window.__seen.push(text);
  }).observe(document.getElementById('messages'), {subtree: true, childList: true, characterData: true});
}"""

UNLABELLED = """() => [...document.querySelectorAll('textarea, input, button, progress')]
  .filter((el) => el.offsetParent !== null)
  .filter((el) => el.tagName === 'BUTTON' ? !el.textContent.trim() && !el.getAttribute('aria-label')
                                          : el.labels.length === 0)
  .map((el) => el.outerHTML.slice(0, 80))"""


@pytest.fixture
async def browser() -> AsyncIterator[object]:
    if not CHROMIUM.exists():
        if os.environ.get("CI"):
            pytest.fail(f"{CHROMIUM} is missing: `make browser` installs Debian's chromium")
        pytest.skip(f"{CHROMIUM} is missing: run `make browser` (installs Debian's chromium)")
    from playwright.async_api import async_playwright

    expect.set_options(timeout=60_000)

    async with async_playwright() as pw:
        chromium = await pw.chromium.launch(executable_path=str(CHROMIUM), headless=True)
        try:
            yield chromium
        finally:
            await chromium.close()


async def new_page(browser, width: int = 1280, height: int = 800):
    context = await browser.new_context(viewport={"width": width, "height": height})
    page = await context.new_page()
    page.set_default_timeout(60_000)
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    page.on("console", lambda msg: errors.append(msg.text) if msg.type == "error" else None)
    return page, errors


async def log_in(page, gw: LiveGateway, token: str) -> None:
    await page.goto(gw.url + "/")
    await page.get_by_label("Access token").fill(token)
    await page.get_by_role("button", name="Log in").click()
    await page.get_by_label("Message", exact=True).wait_for()


async def send(page, text: str):
    """Type a message, press Enter (keyboard only), wait for the whole reply; returns its <li>."""
    box = page.get_by_label("Message", exact=True)
    await box.fill(text)
    await box.press("Enter")
    reply = page.locator("#messages li.assistant").last
    await page.wait_for_function(
        "() => { const li = [...document.querySelectorAll('#messages li.assistant')].pop();"
        " return li && !li.hasAttribute('aria-busy') && li.querySelector('.text').textContent.length > 0; }"
    )
    return reply


async def screenshot(page, name: str) -> Path:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    path = ARTIFACTS / name
    await page.screenshot(path=str(path), full_page=False)
    return path


@pytest.fixture
async def memory_stack(tmp_path, model_dir) -> AsyncIterator[LiveGateway]:
    """The real default model (its replies are words, the tiny model's mostly whitespace)."""
    cfg = integration_config(
        tmp_path,
        model_dir,
        limits={"default_new_tokens": 24},
        memory={
            # Extractive summaries: an LLM summary per archived batch costs seconds on CPU.
            "longterm": {"enabled": True, "archive_batch": 2, "summarise": False},
            "working": {"max_turns": 2},
            "retrieval": {"top_k": 4},
        },
    )
    async for gw in start_stack(cfg):
        yield gw


@pytest.mark.slow
async def test_chat_page_streams_shows_memories_and_keeps_history_across_a_reload(memory_stack, browser):
    gw = memory_stack
    async with gw.server.client("alice") as sdk:
        earlier = (await sdk.chat("My sister Margaret lives in Lisbon.", max_new_tokens=3)).session_id
        for msg in ("I adopted a beagle named Pepper.", "Yesterday I baked sourdough bread."):
            await sdk.chat(msg, session_id=earlier, max_new_tokens=3)
        for _ in range(300):
            if (await sdk.memory_stats()).memories >= 2:
                break
            await asyncio.sleep(0.2)
        else:
            raise AssertionError("the earliest turns were never archived to long-term memory")

    page, errors = await new_page(browser)
    await log_in(page, gw, gw.token("alice"))
    await expect(page.locator("#whoami")).to_have_text("alice (user)")
    await expect(page.locator("#model-version")).to_have_text("model: base")
    await expect(page.locator("#session-list button.session")).to_have_count(1)  # the seeded session

    await page.evaluate(WATCH_STREAM)
    reply = await send(page, "Where does my sister live?")
    seen = await page.evaluate("window.__seen")
    final = await reply.locator(".text").text_content()
    # The reply grew delta by delta in the page before it was complete.
    assert len(seen) >= 2 and all(b.startswith(a) for a, b in zip(seen, seen[1:], strict=False)), seen
    assert final.strip() and seen[-1].strip() in final
    # The side panel shows the memories behind the reply, with scores and why.
    memories = page.locator("#d-memories li.card")
    assert await memories.count() >= 1
    assert "Lisbon" in await page.locator("#d-memories").inner_text()
    first_memory = await memories.first.inner_text()
    assert re.search(r"score -?\d+\.\d{3}", first_memory) and "Why:" in first_memory, first_memory
    # A user has no "correct this answer" action (trainers do).
    assert await reply.get_by_role("button", name="Correct this answer").count() == 0

    told = await send(page, "fact: bob.age = 30")
    assert "accepted" in await page.locator("#d-statements").inner_text()
    assert "accepted" in await told.locator(".text").inner_text()
    await expect(page.locator("#session-list button.session")).to_have_count(2)
    await expect(page.locator('#session-list button[aria-current="true"]')).to_have_count(1)
    assert await page.evaluate(UNLABELLED) == []
    assert errors == []
    await page.locator("#messages li.assistant").first.get_by_role("button", name="Details", exact=True).click()
    await expect(page.locator("#d-memories")).to_contain_text("Lisbon")
    await screenshot(page, "chat-desktop.png")

    await page.reload()
    await page.get_by_label("Message", exact=True).wait_for()
    messages = page.locator("#messages li")
    await page.wait_for_function("() => document.querySelectorAll('#messages li').length === 4")
    history = [await m.locator(".text").text_content() for m in await messages.all()]
    assert history[0] == "Where does my sister live?" and history[1] == final
    assert history[2] == "fact: bob.age = 30"
    # Reply details survive a reload in the same tab.
    await page.locator("#messages li.assistant").first.get_by_role("button", name="Details", exact=True).click()
    assert "Lisbon" in await page.locator("#d-memories").inner_text()

    # Switch to the seeded session and back; then start a new one.
    await page.locator(f'#session-list button[data-session="{earlier}"]').click()
    await page.wait_for_function("() => document.querySelector('#messages').textContent.includes('sourdough')")
    await page.get_by_role("button", name="+ New chat").click()
    assert await page.locator("#messages li").count() == 0

    # Phone width: one column, panels behind buttons, nothing wider than the screen.
    await page.set_viewport_size({"width": 390, "height": 844})
    assert await page.evaluate("document.documentElement.scrollWidth <= window.innerWidth")
    assert not await page.locator("#sessions").is_visible()
    await page.get_by_role("button", name="Sessions", exact=True).click()
    await page.locator("#sessions").wait_for(state="visible")
    assert await page.get_by_role("button", name="Sessions", exact=True).get_attribute("aria-expanded") == "true"
    await page.keyboard.press("Escape")
    await page.locator("#sessions").wait_for(state="hidden")
    await send(page, "Hello from a phone")
    await screenshot(page, "chat-phone.png")
    # The reply's details slide in over the chat, below the header, inside the screen.
    details = page.locator("#details")
    await expect(details).to_be_visible()
    await page.wait_for_function(
        "() => { const r = document.getElementById('details').getBoundingClientRect();"
        " return r.left >= 0 && r.right <= window.innerWidth && r.top >= document.querySelector('.top').offsetHeight; }"
    )
    await screenshot(page, "chat-phone-details.png")
    await page.get_by_role("button", name="Close details").click()
    await expect(details).to_be_hidden()
    assert errors == []


@pytest.fixture
async def learning_stack(tmp_path, tiny_model_dir) -> AsyncIterator[LiveGateway]:
    async for gw in start_stack(integration_config(tmp_path, tiny_model_dir, learning=RELAXED_LEARNING)):
        yield gw


async def test_trainer_corrects_an_answer_and_watches_the_job_deploy(learning_stack, browser):
    gw = learning_stack
    page, errors = await new_page(browser)
    await log_in(page, gw, gw.token("tina", "trainer"))
    reply = await send(page, "What is the capital of Zubrowka?")
    await reply.get_by_role("button", name="Correct this answer").click()
    dialog = page.get_by_role("dialog", name="Correct this answer")
    assert "Zubrowka" in await dialog.locator("#correct-question").inner_text()
    await page.evaluate(
        """() => { window.__states = [];
          new MutationObserver(() => window.__states.push(document.getElementById('job-state').textContent))
            .observe(document.getElementById('job-state'), {childList: true, characterData: true, subtree: true}); }"""
    )
    await dialog.get_by_label("The right answer").fill("The capital of Zubrowka is Vlorn.")
    await dialog.get_by_role("button", name="Submit correction").click()
    await page.wait_for_function(
        "() => document.getElementById('job-state').textContent.startsWith('Deployed')", timeout=240_000
    )
    states = await page.evaluate("window.__states")
    assert any(s.startswith("training") for s in states), states  # progress was shown live
    assert await page.locator("#job-progress").evaluate("p => p.value === p.max")
    assert await page.locator("#job-state").inner_text() == "Deployed: version v1 is live."
    await screenshot(page, "correction-deployed.png")
    await dialog.get_by_role("button", name="Close").click()
    await expect(page.locator("#model-version")).to_have_text("model: v1")
    assert errors == []
