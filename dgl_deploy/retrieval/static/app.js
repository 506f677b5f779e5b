// The search page of `dgl serve`: plain JavaScript over the JSON API (GET /search, POST /search/video,
// GET /search/similar) and the media routes (GET /video with ranges, GET /poster). No dependencies.
// The search shown lives in the page's address (/?q=text, or /?similar=id&row=r for "more like this"): a search
// can be bookmarked or shared, loading such an address runs it, and back/forward move between searches.
"use strict";

(() => {
  const K = 24; // results per query
  const $ = (id) => document.getElementById(id);
  const form = $("search-form"), input = $("q"), upload = $("upload");
  const tokenForm = $("token-form"), tokenInput = $("token");
  const message = $("message"), status = $("status");
  const list = $("results"), title = $("results-title");
  const player = $("player"), video = $("video"), nowPlaying = $("now-playing");

  let token = sessionStorage.getItem("dgl-token") || "";
  let hits = []; // the results shown
  let selected = -1; // index of the selected card
  let playing = 0; // generation of the play request (a newer one cancels an older one's callbacks)
  let current = null; // the hit in the player
  let retry = null; // what to do once a token is given
  let searching = 0; // generation of the search request (only the newest one's results are shown)
  const clips = []; // files searched with this tab (an address cannot hold them): history entries name their index

  // A token in the address (?token=... or #token=...) is kept for this tab and removed from the address bar
  // (the rest of the address, a search, stays).
  const addressParams = new URLSearchParams(location.search);
  const fromAddress = addressParams.get("token") || new URLSearchParams(location.hash.slice(1)).get("token");
  if (fromAddress) {
    token = fromAddress;
    sessionStorage.setItem("dgl-token", token);
    addressParams.delete("token");
    const rest = addressParams.toString();
    history.replaceState(null, "", location.pathname + (rest ? `?${rest}` : ""));
  }

  class ApiError extends Error {
    constructor(code, text) {
      super(text);
      this.code = code;
    }
  }

  function showMessage(text, link = null) {
    message.textContent = text;
    if (link) message.append(" ", link);
    message.hidden = !text;
  }

  function mediaUrl(path, params) {
    const query = new URLSearchParams(params);
    if (token) query.set("token", token); // <video>/<img> cannot send headers
    return `${path}?${query}`;
  }

  async function api(path, options = {}) {
    const headers = new Headers(options.headers || {});
    if (token) headers.set("Authorization", `Bearer ${token}`);
    let reply;
    try {
      reply = await fetch(path, { ...options, headers });
    } catch (err) {
      throw new ApiError(0, "cannot reach the server (is `dgl serve` still running?)");
    }
    let body = null;
    try {
      body = await reply.json();
    } catch (err) {
      body = null;
    }
    if (!reply.ok) {
      const text = body && typeof body.error === "string" ? body.error : `${reply.status} ${reply.statusText}`;
      throw new ApiError(reply.status, text);
    }
    return body;
  }

  function failed(err, again) {
    if (err.code === 401) {
      askToken(err.message, again);
      return;
    }
    status.textContent = "";
    showMessage(err.code ? `Error ${err.code}: ${err.message}` : `Error: ${err.message}`);
  }

  function askToken(reason, again) {
    retry = again;
    tokenForm.hidden = false;
    showMessage(token ? `The token was not accepted (${reason}). Enter the right one.`
      : "This server needs an access token: enter it to search.");
    tokenInput.focus();
  }

  tokenForm.addEventListener("submit", (event) => {
    event.preventDefault();
    const given = tokenInput.value.trim();
    if (!given) {
      showMessage("Enter the token (it is the --token given to `dgl serve`).");
      return;
    }
    token = given;
    sessionStorage.setItem("dgl-token", token);
    tokenInput.value = "";
    tokenForm.hidden = true;
    showMessage("");
    const again = retry || health;
    retry = null;
    again();
    input.focus();
  });

  // the server's state in the status line; then `next` (the search in the address, on page load)
  async function health(next = null) {
    try {
      const info = await api("/health");
      status.textContent = `${info.rows} indexed ${info.rows === 1 ? "row" : "rows"} · ${info.index} search · ${info.backend}`;
    } catch (err) {
      failed(err, () => health(next));
      return;
    }
    if (next) next();
  }

  // ---- searching ----

  async function run(label, request, again) {
    const generation = ++searching;
    showMessage("");
    status.textContent = `Searching ${label}…`;
    document.body.classList.add("busy");
    list.setAttribute("aria-busy", "true");
    try {
      const result = await request();
      if (generation === searching) render(result, label);
    } catch (err) {
      if (generation === searching) failed(err, again);
    } finally {
      if (generation === searching) {
        document.body.classList.remove("busy");
        list.removeAttribute("aria-busy");
      }
    }
  }

  // ---- the address: which search is shown ----

  // the search an address names: {q}, {similar: {id, row, start}}, or null (none)
  function searchOf(address) {
    const params = new URLSearchParams(address);
    const q = (params.get("q") || "").trim();
    if (q) return { q };
    const id = params.get("similar");
    if (!id) return null;
    const hit = { id };
    const row = Number(params.get("row")), start = Number(params.get("start"));
    if (params.get("row") && Number.isInteger(row) && row >= 0) hit.row = row;
    if (params.get("start") && Number.isFinite(start)) hit.start = start;
    return { similar: hit };
  }

  function addressOf(shown) {
    if (shown.q !== undefined) return `?${new URLSearchParams({ q: shown.q })}`;
    const hit = shown.similar, params = { similar: hit.id };
    if (Number.isInteger(hit.row)) params.row = hit.row;
    if (Number.isFinite(hit.start)) params.start = hit.start;
    return `?${new URLSearchParams(params)}`;
  }

  // a new search gets a new history entry (none when it is the one in the address already)
  function remember(shown, push) {
    if (!push) return;
    const address = location.pathname + addressOf(shown);
    if (address !== location.pathname + location.search) history.pushState(null, "", address);
  }

  function search(push = true) {
    const q = input.value.trim();
    if (!q) {
      showMessage("The query is empty: type what you are looking for, then press Enter.");
      input.focus();
      return Promise.resolve();
    }
    remember({ q }, push);
    return run(`“${q}”`, () => api(`/search?${new URLSearchParams({ q, k: K })}`), () => search(false));
  }

  function similar(hit, push = true) {
    const params = { id: hit.id, k: K };
    if (Number.isInteger(hit.row)) params.row = hit.row;
    const label = `videos like ${baseName(hit.id)}${Number.isFinite(hit.start) ? ` at ${clock(hit.start)}` : ""}`;
    remember({ similar: hit }, push);
    return run(label, () => api(`/search/similar?${new URLSearchParams(params)}`), () => similar(hit, false));
  }

  function searchClip(file, push = true) {
    if (push) { // the file cannot go into the address: the entry is the bare page, the file kept for this tab
      clips.push(file);
      history.pushState({ clip: clips.length - 1 }, "", location.pathname);
    }
    const body = new FormData();
    body.append("file", file, file.name);
    return run(`videos like the clip “${file.name}”`, () => api(`/search/video?k=${K}`, { method: "POST", body }),
      () => searchClip(file, false));
  }

  function clearResults() {
    searching += 1; // a search still running is no longer shown
    hits = [];
    selected = -1;
    list.replaceChildren();
    title.hidden = true;
    showMessage("");
    document.body.classList.remove("busy");
    list.removeAttribute("aria-busy");
  }

  // show the search the address names (page load, back, forward), without a new history entry
  function showAddress() {
    const shown = searchOf(location.search);
    const clip = history.state && Number.isInteger(history.state.clip) ? clips[history.state.clip] : undefined;
    if (shown && shown.q !== undefined) {
      input.value = shown.q;
      search(false);
    } else if (shown) {
      input.value = "";
      similar(shown.similar, false);
    } else if (clip) {
      input.value = "";
      searchClip(clip, false);
    } else {
      input.value = "";
      clearResults();
      health();
    }
  }

  window.addEventListener("popstate", showAddress);

  form.addEventListener("submit", (event) => {
    event.preventDefault();
    search();
  });

  upload.addEventListener("change", () => {
    const file = upload.files[0];
    if (file) searchClip(file).finally(() => { upload.value = ""; });
  });

  // ---- results ----

  function hasMoment(hit) {
    return Number.isFinite(hit.start) && Number.isFinite(hit.end);
  }

  function baseName(id) {
    return id.split("/").pop();
  }

  function folderName(id) {
    const parts = id.split("/");
    return parts.length > 1 ? parts.slice(0, -1).join("/") : "";
  }

  // seconds -> m:ss, or m:ss.s when not whole (h:mm:ss past an hour)
  function clock(seconds) {
    const whole = Math.abs(seconds - Math.round(seconds)) < 0.05;
    const s = whole ? Math.round(seconds) : Math.round(seconds * 10) / 10;
    const h = Math.floor(s / 3600), m = Math.floor((s % 3600) / 60), rest = s - h * 3600 - m * 60;
    const secs = whole ? String(rest).padStart(2, "0") : rest.toFixed(1).padStart(4, "0");
    return h ? `${h}:${String(m).padStart(2, "0")}:${secs}` : `${m}:${secs}`;
  }

  function element(tag, className, text) {
    const node = document.createElement(tag);
    if (className) node.className = className;
    if (text !== undefined) node.textContent = text;
    return node;
  }

  function card(hit, index) {
    const item = element("li", "card");
    item.tabIndex = -1;
    item.dataset.index = String(index);
    const moment = hasMoment(hit) ? `${clock(hit.start)}–${clock(hit.end)}` : "";
    item.setAttribute("aria-label",
      `${index + 1}. ${hit.id}${moment ? `, ${moment}` : ""}, score ${hit.score.toFixed(3)}. Enter plays, M finds more like it`);
    const poster = element("img", "poster");
    poster.alt = "";
    poster.decoding = "async";
    poster.src = mediaUrl("/poster", hasMoment(hit) ? { id: hit.id, start: hit.start } : { id: hit.id });
    poster.addEventListener("error", () => item.classList.add("no-poster"));
    const frame = element("div", "frame");
    frame.append(poster);
    if (moment) frame.append(element("span", "moment", moment));
    const name = element("div", "name", baseName(hit.id));
    name.title = hit.id;
    const details = element("div", "details");
    details.append(element("span", "folder", folderName(hit.id)), element("span", "score", hit.score.toFixed(3)));
    const more = element("button", "more", "More like this");
    more.type = "button";
    more.tabIndex = -1;
    more.addEventListener("click", (event) => {
      event.stopPropagation();
      similar(hit);
    });
    item.append(frame, name, details, more);
    item.addEventListener("click", () => play(index));
    return item;
  }

  function render(result, label) {
    hits = Array.isArray(result.results) ? result.results : [];
    list.replaceChildren(...hits.map(card));
    title.hidden = false;
    title.textContent = hits.length ? `${hits.length} ${hits.length === 1 ? "result" : "results"} for ${label}`
      : `No results for ${label}`;
    status.textContent = typeof result.took_ms === "number" ? `took ${Math.round(result.took_ms)} ms` : "";
    selected = -1;
    if (hits.length) select(0, false);
  }

  function cards() {
    return list.querySelectorAll(".card");
  }

  function select(index, focus) {
    const all = cards();
    if (!all.length) return;
    index = Math.max(0, Math.min(index, all.length - 1));
    if (selected >= 0 && all[selected]) {
      all[selected].tabIndex = -1;
      all[selected].classList.remove("selected");
      all[selected].querySelector(".more").tabIndex = -1;
    }
    selected = index;
    const chosen = all[index];
    chosen.tabIndex = 0;
    chosen.classList.add("selected");
    chosen.querySelector(".more").tabIndex = 0;
    if (focus) {
      chosen.focus();
      chosen.scrollIntoView({ block: "nearest" });
    }
  }

  function columns() {
    const all = cards();
    if (!all.length) return 1;
    const top = all[0].offsetTop;
    let count = 0;
    while (count < all.length && all[count].offsetTop === top) count += 1;
    return Math.max(1, count);
  }

  list.addEventListener("keydown", (event) => {
    const item = event.target.closest(".card");
    if (!item) return;
    const onButton = event.target.tagName === "BUTTON";
    const index = Number(item.dataset.index);
    const step = { ArrowRight: 1, ArrowLeft: -1, ArrowDown: columns(), ArrowUp: -columns() }[event.key];
    if (step !== undefined) {
      event.preventDefault();
      if (index + step < 0 && event.key === "ArrowUp") input.focus();
      else if (index + step >= 0 && index + step < hits.length) select(index + step, true);
    } else if (event.key === "Home" || event.key === "End") {
      event.preventDefault();
      select(event.key === "Home" ? 0 : hits.length - 1, true);
    } else if ((event.key === "Enter" || event.key === " ") && !onButton) {
      event.preventDefault();
      play(index);
    } else if ((event.key === "m" || event.key === "M") && !event.ctrlKey && !event.metaKey && !event.altKey) {
      event.preventDefault();
      similar(hits[index]);
    }
  });

  list.addEventListener("focusin", (event) => {
    const item = event.target.closest(".card");
    if (item && Number(item.dataset.index) !== selected) select(Number(item.dataset.index), false);
  });

  input.addEventListener("keydown", (event) => {
    if (event.key === "ArrowDown" && hits.length) {
      event.preventDefault();
      select(Math.max(selected, 0), true);
    }
  });

  // ---- playing ----

  function play(index) {
    if (!hits[index]) return;
    select(index, false);
    playAt(hits[index]);
  }

  // Play `hit` in the page from its moment's start (0 for a whole video): the file itself, or (`preview`) the
  // server's H.264 preview of the moment, whose time 0 is the moment's start, for files the browser cannot play.
  function playAt(hit, preview = false) {
    const generation = ++playing;
    const start = hasMoment(hit) ? hit.start : 0;
    const params = hasMoment(hit) ? { id: hit.id, start: hit.start } : { id: hit.id };
    const src = preview ? mediaUrl("/preview", params) : mediaUrl("/video", { id: hit.id });
    current = hit;
    player.hidden = false;
    video.dataset.ready = "0";
    video.dataset.start = String(start);
    video.dataset.preview = preview ? "1" : "0";
    nowPlaying.textContent = hasMoment(hit) ? `${hit.id} · ${clock(hit.start)}–${clock(hit.end)}` : hit.id;
    const seek = () => {
      if (generation !== playing) return;
      video.addEventListener("seeked", () => {
        if (generation !== playing) return;
        video.dataset.ready = "1";
        video.play().catch(() => {}); // a browser may refuse autoplay: the controls are there
      }, { once: true });
      video.currentTime = preview ? 0 : start;
    };
    if (video.dataset.src === src && video.readyState >= 1 && !video.error) {
      seek();
    } else {
      video.dataset.id = hit.id;
      video.dataset.src = src;
      video.addEventListener("loadedmetadata", seek, { once: true });
      video.src = src;
    }
    player.scrollIntoView({ block: "nearest" });
  }

  video.addEventListener("error", async () => {
    const id = video.dataset.id;
    if (!id || !current) return;
    const hit = current;
    try {
      await api(`/video?${new URLSearchParams({ id })}`, { headers: { Range: "bytes=0-0" } });
    } catch (err) {
      if (err.code === 401) {
        askToken(err.message, () => playAt(hit));
        return;
      }
      showMessage(`Cannot play ${id}: ${err.message}`);
      return;
    }
    if (video.dataset.preview !== "1") { // the file is there, the browser cannot play it: play its preview
      playAt(hit, true);
      return;
    }
    const download = element("a", "download");
    download.href = mediaUrl("/video", { id });
    download.download = baseName(id);
    download.textContent = "Download the file";
    showMessage(`${id} cannot be played in this browser (its format or codec), nor its preview.`, download);
  });

  function closePlayer() {
    playing += 1;
    video.pause();
    player.hidden = true;
    if (selected >= 0) select(selected, true);
  }

  $("close-player").addEventListener("click", closePlayer);
  document.addEventListener("keydown", (event) => {
    if (event.key === "Escape" && !player.hidden) closePlayer();
  });

  // for tests and the console: play or show results without going through a search
  window.dglPage = { playAt, render, search, similar, clock, state: () => ({ hits, selected, token: Boolean(token) }) };

  health(searchOf(location.search) ? showAddress : null); // an address with a search (a bookmark, a link) runs it
})();
