"""Radiology report text per kidney, and the questionnaire answers that the text supports.

A report is built in two steps. First the radiologist decides what to say: ``lesion_mentions``
turns the measured geometry and the mass's visible signs into one option of each of the 14
questions (``questionnaire.QUESTIONS``), leaving some findings unmentioned at random, and forms an
impression that, like a real one, can be wrong (a fat-poor angiomyolipoma read as carcinoma).
Then ``render_kidney_report`` writes English findings and impression from those mentions, with
several phrasings per finding. ``questionnaire_answers`` reads the answers back from the same
mentions, so an answer is never more than the text says: an unmentioned finding is class 0.

Usage::

    mentions = lesion_mentions(rng, lesion, measurement, stage_info, phases, hu_offset, mention_rate=0.85)
    findings, impression = render_kidney_report(rng, "left", mentions)
    answers = questionnaire_answers(mentions)      # {"number": 1, "location": 3, ...}
"""
from __future__ import annotations

import numpy as np

from ..questionnaire import QUESTIONS, option_index, size_class

_Q = {q.key: q for q in QUESTIONS}

# What a radiologist tends to conclude per histology: (benign/malignant option, probability), (nature option, p).
_IMPRESSION = {
    "angiomyolipoma": ({"highly likely benign": 0.85, "more likely benign": 0.15}, {"angiomyolipoma": 1.0}),
    "fat_poor_angiomyolipoma": ({"more likely malignant": 0.5, "more likely benign": 0.35, "highly likely malignant": 0.15},
                                {"malignant tumor": 0.55, "angiomyolipoma": 0.3, "other benign lesion": 0.15}),
    "simple_cyst": ({"highly likely benign": 1.0}, {"cyst": 1.0}),
    "complex_cyst": ({"more likely benign": 0.6, "more likely malignant": 0.4}, {"cyst": 1.0}),
    "oncocytoma": ({"more likely benign": 0.35, "more likely malignant": 0.45, "highly likely malignant": 0.2},
                   {"other benign lesion": 0.45, "malignant tumor": 0.55}),
    "clear_cell_rcc_indolent": ({"highly likely malignant": 0.75, "more likely malignant": 0.25}, {"malignant tumor": 1.0}),
    "papillary_rcc_indolent": ({"more likely malignant": 0.6, "highly likely malignant": 0.25, "more likely benign": 0.15},
                               {"malignant tumor": 0.85, "other benign lesion": 0.15}),
    "chromophobe_rcc": ({"more likely malignant": 0.55, "highly likely malignant": 0.35, "more likely benign": 0.1},
                        {"malignant tumor": 0.85, "other benign lesion": 0.15}),
    "clear_cell_rcc_aggressive": ({"highly likely malignant": 0.95, "more likely malignant": 0.05}, {"malignant tumor": 1.0}),
    "papillary_rcc_aggressive": ({"highly likely malignant": 0.8, "more likely malignant": 0.2}, {"malignant tumor": 1.0}),
}


def impression_agrees(call: str | None, nature: str) -> bool:
    """Whether a favoured diagnosis fits the benign/malignant call: a radiologist who calls a mass
    probably benign does not favour a carcinoma, nor the reverse. A cyst fits either call."""
    if call is None or nature == "cyst":
        return True
    return ("malignant" in call) == (nature == "malignant tumor")


def _pick(rng, options: dict) -> str:
    keys = list(options)
    p = np.array([options[k] for k in keys], float)
    return keys[rng.choice(len(keys), p=p / p.sum())]


def lesion_mentions(rng: np.random.Generator, lesion, m, stage_info: dict, phases, hu_offset: float = 0.0,
                    mention_rate: float = 0.85, extra_cysts: int = 0, small: bool = False) -> dict:
    """What the report says about the mass: question key -> option text (None = not mentioned),
    plus the facts the text quotes (``_size``, ``_hu``, ``_side``, ...)."""
    h, f = lesion.histology, lesion.features
    say = lambda p=mention_rate: rng.random() < p  # noqa: E731
    dims_cm = [round(d / 10.0, 1) for d in m.dims_mm]
    key = h.key
    cystic = h.label == 3
    necrotic_big = f.get("necrosis") and f.get("necrosis_fraction", 0) > 0.12
    mt = {q: None for q in _Q}
    mt["number"] = "multiple/disseminated lesions or other" if extra_cysts else "solitary lesion"
    mt["location"] = m.pole if say(0.95) else None
    mt["size"] = _Q["size"].options[size_class(dims_cm[0])] if say(0.95) else None
    mt["exophytic"] = "yes" if m.exophytic_fraction >= 0.25 and say() else None
    morph = {"round": "round, ovoid or oval", "lobulated": "lobulated", "irregular": "irregular, ill-defined"}[lesion.morphology]
    if dims_cm[0] > 7 and not cystic and rng.random() < 0.4:
        morph = "mass-like"
    mt["morphology"] = morph if say(0.7) else None
    mt["cystic_solid"] = ("cystic" if cystic else "cystic and solid" if necrotic_big else "solid") if say(0.9) else None
    density = {"angiomyolipoma": "fat density (angiomyolipoma)", "simple_cyst": "hypodense",
               "complex_cyst": "hyperdense" if f.get("hyperdense") else "hypodense", "fat_poor_angiomyolipoma": "hyperdense",
               "oncocytoma": "isodense", "chromophobe_rcc": "isodense",
               "papillary_rcc_indolent": _pick(rng, {"isodense": 0.5, "hypodense": 0.5}),
               "papillary_rcc_aggressive": "heterogeneous density"}.get(key, "heterogeneous density")
    if necrotic_big and not cystic:
        density = "mixed density"
    mt["density"] = density if say(0.8) else None
    if f.get("necrosis"):
        mt["necrosis"] = "yes" if say(0.9) else None
    elif not cystic:
        mt["necrosis"] = "no" if say(0.3) else None
    enh = {"simple_cyst": "non-enhancing", "complex_cyst": "cyst wall/septal enhancement",
           "papillary_rcc_indolent": "mild enhancement", "papillary_rcc_aggressive": "mild enhancement",
           "chromophobe_rcc": "moderate enhancement", "fat_poor_angiomyolipoma": "moderate enhancement",
           "angiomyolipoma": "moderate enhancement", "oncocytoma": "marked enhancement"}.get(key, "heterogeneous enhancement")
    if key.startswith("clear_cell") and rng.random() < 0.25:
        enh = "marked enhancement"
    contrast = [p for p in phases if p != "N"]
    mt["enhancement"] = enh if contrast and say(0.9) else None
    art = {"simple_cyst": "no enhancement", "complex_cyst": "no enhancement", "papillary_rcc_indolent": "mild enhancement",
           "papillary_rcc_aggressive": "mild enhancement", "chromophobe_rcc": "mild enhancement",
           "angiomyolipoma": "mild enhancement"}.get(key, "marked enhancement")
    mt["arterial_enhancement"] = art if "A" in phases and say(0.6) else None
    mt["margin"] = f.get("margin", "well-defined") if say(0.75) else None
    bm, nature = _IMPRESSION[key]
    mt["benign_malignant"] = _pick(rng, bm) if say(0.9) else None
    if say(0.9):
        agreeing = {k: v for k, v in nature.items() if impression_agrees(mt["benign_malignant"], k)}
        mt["nature"] = _pick(rng, agreeing) if agreeing else None
    sinus = stage_info.get("sinus_invasion", False)
    mt["sinus_invasion"] = ("yes" if say(0.9) else None) if sinus else ("no" if say(0.35) else None)
    if small:
        for k in ("exophytic", "morphology", "density", "necrosis", "arterial_enhancement", "margin", "sinus_invasion"):
            mt[k] = None
        mt["cystic_solid"] = "cystic" if say(0.9) else None
        mt["enhancement"] = "non-enhancing" if contrast and say(0.6) else None
        mt["benign_malignant"] = "highly likely benign" if say(0.5) else None
        mt["nature"] = "cyst"
    mt["_dims"] = dims_cm
    mt["_hu"] = {p: int(round(f["hu"][p] + hu_offset)) for p in phases}
    mt["_fat_hu"] = int(round(f["fat_hu"] + hu_offset)) if "fat_hu" in f else None
    mt["_phases"] = tuple(phases)
    mt["_features"] = dict(f)
    mt["_histology"] = key
    mt["_extra_cysts"] = extra_cysts
    return mt


def questionnaire_answers(mentions: dict | None) -> dict:
    """Class index per question key from the mentions; 0 ("not mentioned / no mass") when unsaid."""
    if mentions is None:
        return {q.key: 0 for q in QUESTIONS}
    out = {}
    for q in QUESTIONS:
        opt = mentions.get(q.key)
        out[q.key] = 0 if opt is None else option_index(q.key, opt)
    return out


_NORMAL_FINDINGS = (
    "The {side} kidney is normal in size and morphology, with normal corticomedullary differentiation and no focal lesion.",
    "The {side} kidney shows normal size, contour and enhancement. No mass, calculus or hydronephrosis.",
    "No focal abnormality of the {side} kidney. The collecting system is not dilated.",
    "The {side} kidney is unremarkable; the renal parenchyma enhances homogeneously and no space-occupying lesion is seen.",
)
_NORMAL_IMPRESSION = ("Normal {side} kidney.", "No abnormality of the {side} kidney.", "Unremarkable {side} kidney.", "")


def normal_report(rng: np.random.Generator, side: str) -> tuple[str, str]:
    return (_NORMAL_FINDINGS[rng.integers(len(_NORMAL_FINDINGS))].format(side=side),
            _NORMAL_IMPRESSION[rng.integers(len(_NORMAL_IMPRESSION))].format(side=side))


def _size_text(rng, dims) -> str:
    if rng.random() < 0.25:
        return " x ".join(f"{int(round(d * 10))}" for d in dims[:2]) + " mm"
    n = 3 if rng.random() < 0.25 else 2
    return " x ".join(f"{d:.1f}" for d in dims[:n]) + " cm"


def _article(word: str) -> str:
    return "An" if word[:1].lower() in "aeiou" else "A"


def render_kidney_report(rng: np.random.Generator, side: str, mt: dict, small: bool = False) -> tuple[str, str]:
    """Findings and impression text for one kidney holding the mass described by ``mt``."""
    f = mt["_features"]
    phases = mt["_phases"]
    kind = {"cystic": rng.choice(["cystic lesion", "cyst"]), "cystic and solid": rng.choice(["cystic-solid mass", "mixed cystic and solid mass"]),
            "solid": rng.choice(["solid mass", "soft-tissue mass", "solid lesion"]), None: rng.choice(["lesion", "mass", "space-occupying lesion"])}[mt["cystic_solid"]]
    adj = {"round, ovoid or oval": rng.choice(["round", "oval", "well-circumscribed round"]), "lobulated": "lobulated",
           "irregular, ill-defined": "irregular", "mass-like": "large", None: ""}[mt["morphology"]]
    enh_adj = {"heterogeneous enhancement": "heterogeneously enhancing", "marked enhancement": "avidly enhancing",
               "mild enhancement": "mildly enhancing", "moderate enhancement": "moderately enhancing",
               "non-enhancing": "non-enhancing", "cyst wall/septal enhancement": "", None: ""}[mt["enhancement"]]
    where = f"the {mt['location']} of the {side} kidney" if mt["location"] else f"the {side} kidney"
    if mt["location"] == "mid pole":
        where = rng.choice([f"the interpolar region of the {side} kidney", f"the mid portion of the {side} kidney"])
    size = _size_text(rng, mt["_dims"]) if mt["size"] else None
    descr = " ".join(w for w in (adj, enh_adj if rng.random() < 0.6 else "", kind) if w)
    style = rng.integers(3)
    if style == 0 and size:
        first = f"{_article(size)} {size} {descr} is seen in {where}."
    elif style == 1:
        first = f"There is {_article(descr).lower()} {descr}{f' measuring approximately {size}' if size else ''} in {where}."
    else:
        first = f"In {where}, {_article(descr).lower()} {descr}{f' measuring {size}' if size else ''} is noted."
    s = [first]
    if mt["exophytic"]:
        s.append(rng.choice(["The lesion protrudes beyond the renal contour.", "It is predominantly exophytic.",
                             "It bulges from the renal surface with an exophytic component."]))
    hu = mt["_hu"]
    if mt["density"]:
        word = {"hypodense": "hypodense", "isodense": "isodense to the renal parenchyma", "hyperdense": "hyperdense",
                "heterogeneous density": "of heterogeneous density", "mixed density": "of mixed density",
                "fat density (angiomyolipoma)": "fat-containing"}[mt["density"]]
        if "N" in phases and rng.random() < 0.5:
            fat = mt["_fat_hu"] is not None and mt["density"].startswith("fat")
            quote = f"areas of about {mt['_fat_hu']} HU" if fat else f"about {hu['N']} HU"
            s.append(f"On unenhanced images it is {word} ({quote}).")
        else:
            s.append(f"It is {word}.")
        if mt["density"].startswith("fat"):
            s.append(rng.choice(["Areas of macroscopic fat are present within the lesion.", "It contains foci of macroscopic fat attenuation."]))
    enh = mt["enhancement"]
    if enh:
        if enh == "non-enhancing":
            s.append(rng.choice(["No enhancement is seen after contrast administration.", "It does not enhance after contrast."]))
        elif enh == "cyst wall/septal enhancement":
            s.append(rng.choice(["Thin septa and the cyst wall show mild enhancement.", "Enhancing septa are seen within the cyst."]))
        else:
            word = {"heterogeneous enhancement": "heterogeneous", "marked enhancement": "marked", "mild enhancement": "mild",
                    "moderate enhancement": "moderate"}[enh]
            txt = f"After contrast administration it shows {word} enhancement"
            if word in ("heterogeneous", "marked") and "A" in phases and "V" in phases and hu["A"] - hu["V"] > 15 and rng.random() < 0.7:
                txt += f" ({hu['A']} HU in the corticomedullary phase) with washout in the nephrographic phase ({hu['V']} HU)"
            elif word == "mild" and rng.random() < 0.5:
                txt += ", progressive on later phases"
            s.append(txt + ".")
    if mt["arterial_enhancement"]:
        s.append({"no enhancement": "It does not enhance in the arterial phase.",
                  "mild enhancement": "In the arterial phase it enhances only mildly.",
                  "marked enhancement": "In the arterial phase it enhances markedly."}[mt["arterial_enhancement"]])
    if mt["necrosis"] == "yes":
        s.append(rng.choice(["Central non-enhancing necrotic areas are noted.", "There are low-attenuation areas of necrosis within the mass."]))
    elif mt["necrosis"] == "no":
        s.append("No necrosis is seen.")
    if f.get("scar") and rng.random() < 0.7:
        s.append("A central stellate scar is present.")
    if f.get("calcification") and rng.random() < 0.7:
        s.append("Calcification is seen in the wall.")
    if f.get("wall_thickening") and rng.random() < 0.7:
        s.append("The wall is thickened.")
    if mt["margin"]:
        s.append(rng.choice(["The margins are well defined.", "It is well circumscribed."]) if mt["margin"] == "well-defined"
                 else rng.choice(["The margin is ill-defined and infiltrative.", "Its border with the renal parenchyma is unclear."]))
    if mt["sinus_invasion"] == "yes":
        s.append(rng.choice(["The tumour extends into the renal sinus fat.", "Invasion of the renal sinus and collecting system is suspected."]))
    elif mt["sinus_invasion"] == "no":
        s.append(rng.choice(["The renal sinus and collecting system are not involved.", "No invasion of the collecting system."]))
    if f.get("stranding") and rng.random() < 0.85:
        s.append("Perinephric fat stranding is seen adjacent to the mass.")
    if f.get("thrombus") and rng.random() < 0.9:
        ext = " extending into the inferior vena cava" if f["thrombus"] == "ivc" else ""
        s.append(f"A filling defect in the {side} renal vein{ext} is consistent with tumour thrombus.")
    if f.get("nodes") and rng.random() < 0.85:
        s.append("Enlarged retroperitoneal lymph nodes are present.")
    if mt["_extra_cysts"]:
        s.append("An additional small cyst is seen in the same kidney.")
    if not small and rng.random() < 0.5:
        s.append("The remaining renal parenchyma enhances normally. No hydronephrosis.")
    return " ".join(s), _impression(rng, side, mt)


def _impression(rng, side: str, mt: dict) -> str:
    loc = {"upper pole": "upper pole ", "lower pole": "lower pole ", "mid pole": "interpolar ", None: ""}[mt["location"]]
    head = f"{side.capitalize()} {loc}renal {'cyst' if mt['nature'] == 'cyst' and mt['cystic_solid'] == 'cystic' else 'mass'}"
    if mt["size"]:
        head += f" ({mt['_dims'][0]:.1f} cm)"
    noun = {"malignant tumor": rng.choice(["renal cell carcinoma", "a malignant renal neoplasm"]),
            "angiomyolipoma": "angiomyolipoma", "cyst": rng.choice(["a complex cyst", "a cystic lesion"]) if mt["_histology"] == "complex_cyst" else "a simple cyst",
            "other benign lesion": rng.choice(["oncocytoma", "a benign neoplasm such as oncocytoma"]), None: None}[mt["nature"]]
    bm = mt["benign_malignant"]
    lead = {"highly likely benign": "consistent with", "highly likely malignant": "highly suspicious for",
            "more likely benign": "probably benign, favour", "more likely malignant": "likely malignant, favour"}
    alone = {"highly likely benign": "benign appearance, no follow-up needed", "highly likely malignant": "highly suspicious for malignancy",
             "more likely benign": "probably benign", "more likely malignant": "likely malignant"}
    if bm and noun:
        txt = f"{head}, {lead[bm]} {noun}."
    elif bm:
        txt = f"{head}, {alone[bm]}."
    elif noun:
        txt = f"{head}; {noun} is considered."
    else:
        txt = f"{head}; further characterisation is recommended."
    f = mt["_features"]
    if f.get("thrombus"):
        txt += " Renal vein tumour thrombus" + (" extending into the IVC." if f["thrombus"] == "ivc" else ".")
    if mt["_extra_cysts"]:
        txt += f" Additional small {side} renal cyst."
    return txt
