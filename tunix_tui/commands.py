"""Command palette provider: the current screen's key bindings and the app's, by name (tunix_tui/keys.py)."""

from __future__ import annotations

from functools import partial

from textual.command import DiscoveryHit, Hit, Hits, Provider

from tunix_tui.keys import own_bindings, palette_entries


class ScreenActions(Provider):
    """Offers the actions the keys of the screen the palette was opened over run now, and the app's."""

    def _entries(self) -> list[tuple[str, str, str]]:
        app = self.app
        return palette_entries(self.screen, own_bindings(self.screen)) + [
            (name, help_, f"app.{action}") for name, help_, action in palette_entries(app, own_bindings(app))]

    async def _run(self, action: str) -> None:
        await self.screen.run_action(action)

    async def discover(self) -> Hits:
        for name, help_, action in self._entries():
            yield DiscoveryHit(name, partial(self._run, action), help=help_ or None)

    async def search(self, query: str) -> Hits:
        matcher = self.matcher(query)
        for name, help_, action in self._entries():
            score = matcher.match(name)
            if score > 0:
                yield Hit(score, matcher.highlight(name), partial(self._run, action), help=help_ or None)
