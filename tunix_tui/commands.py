"""Command palette provider: the current screen's actions (the same ones its keys run)."""

from __future__ import annotations

from functools import partial

from textual.command import DiscoveryHit, Hit, Hits, Provider


class ScreenActions(Provider):
    """Offers `palette_actions()` of the screen the palette was opened over."""

    def _entries(self) -> list[tuple[str, str, str]]:
        entries = getattr(self.screen, "palette_actions", None)
        out = list(entries()) if callable(entries) else []
        out.append(("Toggle light / dark theme", "f10", "app.toggle_theme"))
        return out

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
