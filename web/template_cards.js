// Title and one-line description on the template browser's cards of this pack's workflows.
//
// ComfyUI's frontend (1.35, the one ComfyUI 0.8 pins) builds a custom node pack's template cards from the file
// names that GET /workflow_templates lists, and shows the file name as both title and description; it reads no
// metadata for them. Core templates come with a title and a description (GET /templates/index.json through
// api.getCoreWorkflowTemplates). So this extension moves the pack's templates from the first list into a
// template category of their own in the second, with the title and description that workflows/make_workflows.py
// writes into each editor file (extra["comfyui-memo"]). Thumbnails and loading stay the frontend's own: a
// category whose moduleName is not "default" is fetched from /api/workflow_templates/<moduleName>/.
// If a file lacks the metadata or anything fails, the frontend's plain listing is left as it was.
import { api } from "../../scripts/api.js";

const CARD_KEY = "comfyui-memo"; // workflows/make_workflows.py: TEMPLATE_CARD_KEY
// This file is served as /extensions/<pack folder>/template_cards.js; the templates are listed under that folder.
const PACK = decodeURIComponent(new URL(import.meta.url).pathname.split("/")[2]);

const listCustomTemplates = api.getWorkflowTemplates.bind(api);
const listCoreTemplates = api.getCoreWorkflowTemplates.bind(api);
let cardsRequest = null;

async function readCard(name) {
  const path = `/workflow_templates/${encodeURIComponent(PACK)}/${encodeURIComponent(name)}.json`;
  const response = await api.fetchApi(path);
  if (!response.ok) throw new Error(`${path}: HTTP ${response.status}`);
  const card = (await response.json())?.extra?.[CARD_KEY];
  if (typeof card?.title !== "string" || typeof card?.description !== "string") {
    throw new Error(`${path} has no extra.${CARD_KEY}.title and description`);
  }
  return { name, title: card.title, description: card.description, mediaType: "image", mediaSubtype: "jpg" };
}

// The pack's cards (null: leave the plain listing), read once per page from the listing and the files.
function packCards() {
  cardsRequest ??= (async () => {
    try {
      const names = (await listCustomTemplates())?.[PACK];
      if (!Array.isArray(names) || names.length === 0) return null;
      return await Promise.all([...names].sort().map(readCard));
    } catch (error) {
      console.warn(`${PACK}: template cards keep their file names:`, error);
      return null;
    }
  })();
  return cardsRequest;
}

api.getWorkflowTemplates = async function () {
  const [listed, cards] = await Promise.all([listCustomTemplates(), packCards()]);
  if (!cards || !listed || typeof listed !== "object" || !(PACK in listed)) return listed;
  const others = { ...listed };
  delete others[PACK];
  return others;
};

api.getCoreWorkflowTemplates = async function (...args) {
  const [core, cards] = await Promise.all([listCoreTemplates(...args), packCards()]);
  if (!cards || !Array.isArray(core)) return core;
  return [...core, { moduleName: PACK, title: PACK, type: "image", templates: cards }];
};
